/*
 * popload -- the POP3 load generator of popserv's benchmarks (benchmarks/).
 *
 * Not part of popserv and not installed: benchmarks/suite/load.py compiles it
 * with "gcc -O2" into the run's temporary directory.  One thread, epoll,
 * non-blocking sockets with TCP_NODELAY, one command in flight per connection
 * (no pipelining), so that it costs the client core as little as possible and
 * the server is what is measured.
 *
 *   popload churn  port=P users=FILE clients=N start=T warmup=S duration=S expect=K
 *       N connections each loop: connect, greeting, USER, PASS, STAT (K messages
 *       expected), QUIT, wait for the server to close.  Connection slot i logs in
 *       as user i (mod the users in FILE).  Sessions are counted when they end
 *       in the window [T+warmup, T+warmup+duration); T is CLOCK_MONOTONIC.
 *       Sessions whose connection had a TCP retransmission (on loopback: a
 *       SYN dropped on the server's full accept queue) are counted too.
 *
 *   popload idle   port=P users=FILE sessions=N [parallel=50] [hold=600]
 *       Opens N sessions (session i as user i), at most `parallel` logging in
 *       at once, and leaves them authenticated and idle.  Prints a JSON line
 *       when all are in, then holds them until a line (or EOF) on stdin or
 *       `hold` seconds, then QUITs them all and prints the final JSON.
 *
 *   popload fetch  port=P users=FILE [utf8=1] [list=1] [uidl=1] [retr=all|none]
 *                  [repeat=1] [out=PREFIX]
 *       One session per line of FILE, all at once: greeting, UTF8 (RFC 6856;
 *       an -ERR is fine), USER, PASS, STAT, LIST, UIDL, RETR 1..count
 *       (`repeat` times over), QUIT, wait for close.  Everything received is
 *       kept in memory and, after the last session ended, written to
 *       PREFIX.<session>; the JSON gives the offsets of every response body
 *       (still byte-stuffed, without the terminating ".CRLF") in that file.
 *
 *   popload serve  [port=0] [count=2000] [size=50000]
 *       A minimal POP3 responder for calibrating the load generator: it
 *       answers every command at once from prepared buffers (a mailbox of
 *       `count` messages of `size` octets).  Prints {"port": N} and serves
 *       until killed or `limit` seconds.
 *
 * Every mode takes limit=SECONDS (default 3600): the run is abandoned then.
 * A response has 60 s to arrive.  Times in the output are CLOCK_MONOTONIC
 * seconds, the clock of Python's time.monotonic(), so the caller can line
 * them up with its own readings of the server; CPU times are this process's
 * user+system time (getrusage).  Results: one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RESPONSE_TIMEOUT 60.0
#define CLOSE_TIMEOUT 5.0
#define DRAIN_TIMEOUT 10.0
#define RETRY_DELAY 0.05
#define MAX_EVENTS 512
#define SMALL_BUFFER 4096
#define BIG_ROOM (256 * 1024)

/* ------------------------------------------------------------------ utilities */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("popload: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        die("out of memory (%zu octets)", n);
    return q;
}

static void sleep_until(double t)
{
    double d = t - now();
    if (d > 0) {
        struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

/* Options are key=value words after the mode. */
static int n_opts;
static char **opt_keys, **opt_values;

static void parse_options(int argc, char **argv, const char *allowed)
{
    opt_keys = xrealloc(NULL, sizeof(char *) * (size_t)argc);
    opt_values = xrealloc(NULL, sizeof(char *) * (size_t)argc);
    for (int i = 2; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq)
            die("expected key=value, got %s", argv[i]);
        *eq = '\0';
        char pattern[128];
        snprintf(pattern, sizeof pattern, " %s ", argv[i]);
        if (!strstr(allowed, pattern))
            die("unknown option %s for %s (allowed:%s)", argv[i], argv[1], allowed);
        opt_keys[n_opts] = argv[i];
        opt_values[n_opts++] = eq + 1;
    }
}

static const char *opt_str(const char *key, const char *fallback)
{
    for (int i = 0; i < n_opts; i++)
        if (!strcmp(opt_keys[i], key))
            return opt_values[i];
    if (!fallback)
        die("option %s= is required", key);
    return fallback;
}

static double opt_num(const char *key, const char *fallback)
{
    const char *s = opt_str(key, fallback);
    char *end;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0')
        die("option %s=%s is not a number", key, s);
    return v;
}

/* Users: "name password" per line. */
static char **user_names, **user_passwords;
static int n_users;

static void load_users(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        die("cannot read %s: %s", path, strerror(errno));
    char line[512];
    int cap = 0;
    while (fgets(line, sizeof line, f)) {
        char name[256], password[256];
        if (sscanf(line, "%255s %255s", name, password) != 2)
            continue;
        if (n_users == cap) {
            cap = cap ? cap * 2 : 64;
            user_names = xrealloc(user_names, sizeof(char *) * (size_t)cap);
            user_passwords = xrealloc(user_passwords, sizeof(char *) * (size_t)cap);
        }
        user_names[n_users] = strdup(name);
        user_passwords[n_users++] = strdup(password);
    }
    fclose(f);
    if (n_users == 0)
        die("no users in %s", path);
}

/* Errors are counted by kind (static strings). */
#define MAX_KINDS 32
static const char *error_kinds[MAX_KINDS];
static long error_counts[MAX_KINDS];
static char first_error[256];

static void count_error(const char *kind, const char *detail, size_t detail_len)
{
    int i;
    for (i = 0; i < MAX_KINDS && error_kinds[i]; i++)
        if (!strcmp(error_kinds[i], kind))
            break;
    if (i == MAX_KINDS)
        i = MAX_KINDS - 1;
    error_kinds[i] = kind;
    error_counts[i]++;
    if (!first_error[0]) {
        if (detail_len > 160)
            detail_len = 160;
        snprintf(first_error, sizeof first_error, "%s: %.*s", kind, (int)detail_len,
                 detail ? detail : "");
    }
}

/* A JSON string of arbitrary octets (non-printable ones as \u00XX). */
static void json_string(FILE *out, const char *s, size_t n)
{
    fputc('"', out);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            fprintf(out, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            fprintf(out, "\\u%04x", ch);
        else
            fputc(ch, out);
    }
    fputc('"', out);
}

static void print_errors(FILE *out)
{
    fputs("\"errors\": {", out);
    for (int i = 0; i < MAX_KINDS && error_kinds[i]; i++) {
        fprintf(out, "%s", i ? ", " : "");
        json_string(out, error_kinds[i], strlen(error_kinds[i]));
        fprintf(out, ": %ld", error_counts[i]);
    }
    fputs("}, \"first_error\": ", out);
    json_string(out, first_error, strlen(first_error));
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(const double *sorted, long n, double p)
{
    if (n == 0)
        return 0;
    long i = (long)((double)n * p / 100.0);
    return sorted[i < n ? i : n - 1];
}

/* ------------------------------------------------------------------ connections */

enum {
    ST_FREE,
    ST_GREETING,
    ST_UTF8,
    ST_USER,
    ST_PASS,
    ST_STAT,
    ST_LIST,
    ST_UIDL,
    ST_RETR,
    ST_QUIT,
    ST_CLOSING,
    ST_IDLE
};

typedef struct {
    int fd;
    int index;   /* churn: slot; idle, fetch: session */
    int state;
    int writing; /* EPOLLOUT registered */
    int keep;    /* keep all input (fetch) instead of compacting */
    double began, deadline;
    char *in;
    size_t len, cap, pos, scan; /* pos: the unparsed response; scan: terminator search */
    char out[640];
    size_t out_len, out_off;
} conn_t;

static int epfd = -1;
static struct sockaddr_in server;

static void set_target(int port)
{
    memset(&server, 0, sizeof server);
    server.sin_family = AF_INET;
    server.sin_port = htons((unsigned short)port);
    server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

static int conn_open(conn_t *c, double t)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&server, sizeof server) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    /* A refused connection shows up as EPOLLERR; the greeting as EPOLLIN. */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->fd = fd;
    c->state = ST_GREETING;
    c->writing = 0;
    c->began = t;
    c->deadline = t + RESPONSE_TIMEOUT;
    c->len = c->pos = c->scan = 0;
    c->out_len = c->out_off = 0;
    return 0;
}

static void conn_close(conn_t *c)
{
    if (c->fd >= 0)
        close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
    c->state = ST_FREE;
}

static void want_write(conn_t *c, int on)
{
    if (c->writing == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->writing = on;
}

/* Sends what is queued; -1 if the connection broke. */
static int conn_flush(conn_t *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            want_write(c, 1);
            return 0;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            return -1;
        }
    }
    want_write(c, 0);
    return 0;
}

static int conn_send(conn_t *c, int state, double t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->out, sizeof c->out - 2, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof c->out - 2)
        die("command too long");
    memcpy(c->out + n, "\r\n", 2);
    c->out_len = (size_t)n + 2;
    c->out_off = 0;
    c->state = state;
    c->deadline = t + RESPONSE_TIMEOUT;
    return conn_flush(c);
}

#define GOT_DATA 1
#define GOT_EOF 2
#define GOT_ERROR 4

/* Reads what has arrived (a bounded number of reads, to be fair to others). */
static int conn_fill(conn_t *c)
{
    int got = 0;
    size_t room = c->keep ? BIG_ROOM : SMALL_BUFFER;
    for (int i = 0; i < 16; i++) {
        if (c->cap - c->len < room) {
            size_t cap = c->cap ? c->cap : room;
            while (cap - c->len < room)
                cap *= 2;
            c->in = xrealloc(c->in, cap);
            c->cap = cap;
        }
        size_t space = c->cap - c->len;
        ssize_t n = recv(c->fd, c->in + c->len, space, 0);
        if (n > 0) {
            c->len += (size_t)n;
            got |= GOT_DATA;
            if ((size_t)n < space)
                break; /* drained for now; epoll says when there is more */
        } else if (n == 0) {
            return got | GOT_EOF;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            break;
        } else if (errno != EINTR) {
            return got | GOT_ERROR;
        }
    }
    return got;
}

/* A complete single line at pos: 1 and its bounds (without CRLF), else 0. */
static int take_line(conn_t *c, size_t *a, size_t *b)
{
    char *p = memmem(c->in + c->pos, c->len - c->pos, "\r\n", 2);
    if (!p)
        return 0;
    *a = c->pos;
    *b = (size_t)(p - c->in);
    c->pos = *b + 2;
    return 1;
}

/*
 * A complete multi-line response at pos: its status line [sa, sb) and body
 * [ba, bb), the body without the terminating ".CRLF" (empty after -ERR).
 */
static int take_multi(conn_t *c, size_t *sa, size_t *sb, size_t *ba, size_t *bb)
{
    char *p = memmem(c->in + c->pos, c->len - c->pos, "\r\n", 2);
    if (!p)
        return 0;
    size_t eol = (size_t)(p - c->in);
    if (c->in[c->pos] != '+') {
        *sa = c->pos;
        *sb = eol;
        *ba = *bb = eol + 2;
        c->pos = eol + 2;
        return 1;
    }
    /* The terminator is CRLF "." CRLF, where the first CRLF may be the status line's. */
    size_t from = c->scan > eol ? c->scan : eol;
    char *t = memmem(c->in + from, c->len - from, "\r\n.\r\n", 5);
    if (!t) {
        c->scan = c->len > eol + 4 ? c->len - 4 : eol;
        return 0;
    }
    *sa = c->pos;
    *sb = eol;
    *ba = eol + 2;
    *bb = (size_t)(t - c->in) + 2;
    c->pos = (size_t)(t - c->in) + 5;
    c->scan = 0;
    return 1;
}

static void conn_compact(conn_t *c)
{
    if (c->pos == 0)
        return;
    memmove(c->in, c->in + c->pos, c->len - c->pos);
    c->len -= c->pos;
    c->pos = 0;
    c->scan = 0;
}

static int is_ok(const conn_t *c, size_t a, size_t b)
{
    return b - a >= 3 && memcmp(c->in + a, "+OK", 3) == 0;
}

static void raise_fd_limit(long wanted)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && (long)rl.rlim_cur < wanted + 16)
        die("need %ld file descriptors, the limit is %ld", wanted + 16, (long)rl.rlim_cur);
}

/* ------------------------------------------------------------------ churn */

static int churn_expect;
static double churn_window_start, churn_window_end;
static long churn_started, churn_completed, churn_in_window, churn_max, churn_retransmitted;
static double *latencies;
static long n_latencies, cap_latencies;
static double *restart_at;

static void churn_fail(conn_t *c, const char *kind, double t, size_t a, size_t b)
{
    count_error(kind, c->in ? c->in + a : NULL, b - a);
    conn_close(c);
    restart_at[c->index] = t + RETRY_DELAY; /* do not spin on a failing server */
}

static void churn_begin(conn_t *c, double t)
{
    churn_started++;
    if (conn_open(c, t) < 0) {
        count_error("connect", strerror(errno), strlen(strerror(errno)));
        restart_at[c->index] = t + RETRY_DELAY;
    }
}

/* Whether TCP retransmitted on this connection: on loopback, only a SYN
   that a full accept queue dropped (it is sent again after a second). */
static int retransmitted(int fd)
{
    struct tcp_info info;
    socklen_t len = sizeof info;
    memset(&info, 0, sizeof info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) < 0)
        return 0;
    return info.tcpi_total_retrans > 0;
}

static void churn_done(conn_t *c, double t)
{
    churn_completed++;
    if (t >= churn_window_start && t < churn_window_end) {
        churn_in_window++;
        churn_retransmitted += retransmitted(c->fd);
        if (n_latencies == cap_latencies) {
            cap_latencies = cap_latencies ? cap_latencies * 2 : 65536;
            latencies = xrealloc(latencies, sizeof(double) * (size_t)cap_latencies);
        }
        latencies[n_latencies++] = t - c->began;
    }
    conn_close(c);
    if (t < churn_window_end && churn_started < churn_max)
        churn_begin(c, t);
}

static void churn_event(conn_t *c, uint32_t events, double t)
{
    if (events & EPOLLOUT && conn_flush(c) < 0) {
        churn_fail(c, "send", t, 0, 0);
        return;
    }
    int got = conn_fill(c);
    size_t a, b;
    while (c->fd >= 0 && take_line(c, &a, &b)) {
        int ok = is_ok(c, a, b);
        switch (c->state) {
        case ST_GREETING:
            if (!ok)
                return churn_fail(c, "greeting -ERR", t, a, b);
            conn_send(c, ST_USER, t, "USER %s", user_names[c->index % n_users]);
            break;
        case ST_USER:
            if (!ok)
                return churn_fail(c, "USER -ERR", t, a, b);
            conn_send(c, ST_PASS, t, "PASS %s", user_passwords[c->index % n_users]);
            break;
        case ST_PASS:
            if (!ok)
                return churn_fail(c, "PASS -ERR", t, a, b);
            conn_send(c, ST_STAT, t, "STAT");
            break;
        case ST_STAT:
            if (!ok)
                return churn_fail(c, "STAT -ERR", t, a, b);
            if (atol(c->in + a + 3) != churn_expect)
                count_error("STAT count", c->in + a, b - a);
            conn_send(c, ST_QUIT, t, "QUIT");
            break;
        case ST_QUIT:
            if (!ok)
                return churn_fail(c, "QUIT -ERR", t, a, b);
            c->state = ST_CLOSING;
            c->deadline = t + CLOSE_TIMEOUT;
            break;
        default:
            return churn_fail(c, "data after QUIT", t, a, b);
        }
    }
    if (c->fd < 0)
        return;
    conn_compact(c);
    if (got & GOT_EOF) {
        if (c->state == ST_CLOSING)
            churn_done(c, t);
        else
            churn_fail(c, "closed early", t, 0, 0);
    } else if (got & GOT_ERROR || events & EPOLLERR) {
        int e = errno;
        churn_fail(c, e == ECONNREFUSED ? "refused" : e == ECONNRESET ? "reset" : "recv", t, 0, 0);
    } else if (c->len > SMALL_BUFFER * 4) {
        churn_fail(c, "line too long", t, 0, 0);
    }
}

static int run_churn(void)
{
    set_target((int)opt_num("port", NULL));
    load_users(opt_str("users", NULL));
    int clients = (int)opt_num("clients", "50");
    double start = opt_num("start", "0");
    double warmup = opt_num("warmup", "2");
    double duration = opt_num("duration", "10");
    double limit = opt_num("limit", "3600");
    churn_expect = (int)opt_num("expect", "1");
    churn_max = (long)opt_num("max", "100000000");
    if (clients < 1 || duration <= 0)
        die("clients and duration must be positive");
    raise_fd_limit(clients);
    if (start <= 0)
        start = now();
    churn_window_start = start + warmup;
    churn_window_end = churn_window_start + duration;
    double hard_stop = churn_window_end + DRAIN_TIMEOUT;
    if (hard_stop > start + limit)
        hard_stop = start + limit;

    conn_t *conns = calloc((size_t)clients, sizeof(conn_t));
    restart_at = calloc((size_t)clients, sizeof(double));
    if (!conns || !restart_at)
        die("out of memory");
    sleep_until(start);
    double t = now();
    for (int i = 0; i < clients; i++) {
        conns[i].index = i;
        conns[i].fd = -1;
        churn_begin(&conns[i], t);
    }
    double cpu_start = -1, cpu_end = -1, t_cpu_start = 0, t_cpu_end = 0, last_check = t;
    long aborted = 0;
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        t = now();
        if (cpu_start < 0 && t >= churn_window_start) {
            cpu_start = cpu_seconds();
            t_cpu_start = t;
        }
        if (cpu_end < 0 && t >= churn_window_end) {
            cpu_end = cpu_seconds();
            t_cpu_end = t;
        }
        int active = 0;
        double next_wake = t + 0.1;
        for (int i = 0; i < clients; i++) {
            conn_t *c = &conns[i];
            if (c->fd >= 0) {
                active++;
                if (t - last_check >= 0.1 && c->deadline < t) {
                    churn_fail(c, c->state == ST_CLOSING ? "no close after QUIT" : "timeout", t,
                               0, 0);
                }
            } else if (t < churn_window_end && churn_started < churn_max) {
                if (restart_at[i] <= t)
                    churn_begin(c, t);
                else if (restart_at[i] < next_wake)
                    next_wake = restart_at[i];
            }
        }
        if (t - last_check >= 0.1)
            last_check = t;
        if (t >= churn_window_end && active == 0)
            break;
        if (t >= hard_stop) {
            for (int i = 0; i < clients; i++)
                if (conns[i].fd >= 0) {
                    conn_close(&conns[i]);
                    aborted++;
                }
            break;
        }
        double edge = cpu_start < 0 ? churn_window_start : churn_window_end;
        if (t < edge && edge < next_wake)
            next_wake = edge;
        int ms = (int)((next_wake - t) * 1000.0);
        if (ms < 0)
            ms = 0;
        int n = epoll_wait(epfd, events, MAX_EVENTS, ms);
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        t = now();
        for (int k = 0; k < n; k++) {
            conn_t *c = events[k].data.ptr;
            if (c->fd >= 0)
                churn_event(c, events[k].events, t);
        }
    }
    if (cpu_end < 0) {
        cpu_end = cpu_seconds();
        t_cpu_end = now();
    }
    qsort(latencies, (size_t)n_latencies, sizeof(double), cmp_double);
    double sum = 0;
    for (long i = 0; i < n_latencies; i++)
        sum += latencies[i];
    double window = churn_window_end - churn_window_start;
    printf("{\"mode\": \"churn\", \"clients\": %d, \"window_start\": %.6f, "
           "\"window_end\": %.6f, \"sessions\": %ld, \"sessions_per_s\": %.2f, "
           "\"started_total\": %ld, \"completed_total\": %ld, \"aborted\": %ld, "
           "\"retransmitted\": %ld, \"cpu_s\": %.4f, \"cpu_window_s\": %.4f, ",
           clients, churn_window_start, churn_window_end, churn_in_window,
           (double)churn_in_window / window, churn_started, churn_completed, aborted,
           churn_retransmitted, cpu_end - cpu_start, t_cpu_end - t_cpu_start);
    printf("\"latency_ms\": {\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"max\": %.3f, "
           "\"mean\": %.3f}, ",
           1000 * percentile(latencies, n_latencies, 50),
           1000 * percentile(latencies, n_latencies, 90),
           1000 * percentile(latencies, n_latencies, 99),
           n_latencies ? 1000 * latencies[n_latencies - 1] : 0.0,
           n_latencies ? 1000 * sum / (double)n_latencies : 0.0);
    print_errors(stdout);
    printf("}\n");
    return 0;
}

/* ------------------------------------------------------------------ idle */

static int run_idle(void)
{
    set_target((int)opt_num("port", NULL));
    load_users(opt_str("users", NULL));
    int sessions = (int)opt_num("sessions", NULL);
    int parallel = (int)opt_num("parallel", "50");
    double hold = opt_num("hold", "600");
    double limit = opt_num("limit", "3600");
    raise_fd_limit(sessions);
    conn_t *conns = calloc((size_t)sessions, sizeof(conn_t));
    if (!conns)
        die("out of memory");
    double t0 = now(), t = t0, setup_end = 0;
    int next = 0, in_setup = 0, held = 0, failed = 0, dropped = 0, quit_ok = 0;
    int phase = 0; /* 0 logging in, 1 holding, 2 quitting */
    double phase_deadline = t0 + limit;
    struct epoll_event stdin_ev = {.events = EPOLLIN, .data.ptr = NULL};
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        t = now();
        if (phase == 0) {
            while (next < sessions && in_setup < parallel) {
                conn_t *c = &conns[next];
                c->index = next++;
                c->fd = -1;
                if (conn_open(c, t) < 0) {
                    count_error("connect", strerror(errno), strlen(strerror(errno)));
                    failed++;
                } else {
                    in_setup++;
                }
            }
            if (next == sessions && in_setup == 0) {
                setup_end = t;
                printf("{\"ready\": true, \"held\": %d, \"failed\": %d, \"setup_s\": %.3f, ",
                       held, failed, setup_end - t0);
                print_errors(stdout);
                printf("}\n");
                fflush(stdout);
                epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &stdin_ev);
                phase = 1;
                phase_deadline = t + hold;
            }
        }
        if (phase == 1 && t >= phase_deadline)
            goto quit_all;
        if (phase == 2 && (quit_ok + dropped >= held || t >= phase_deadline)) {
            break;
        }
        if (t >= t0 + limit)
            break;
        for (int i = 0; i < next; i++) {
            conn_t *c = &conns[i];
            if (c->fd >= 0 && c->state != ST_IDLE && c->deadline < t) {
                count_error("timeout", NULL, 0);
                if (phase == 0) {
                    in_setup--;
                    failed++;
                } else {
                    dropped++;
                }
                conn_close(c);
            }
        }
        int n = epoll_wait(epfd, events, MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        t = now();
        for (int k = 0; k < n; k++) {
            conn_t *c = events[k].data.ptr;
            if (c == NULL) { /* stdin: a line or EOF ends the hold */
                char buf[256];
                if (read(0, buf, sizeof buf) < 0 && errno == EINTR)
                    continue;
                epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
                goto quit_all;
            }
            if (c->fd < 0)
                continue;
            int got = conn_fill(c);
            size_t a, b;
            int setup = c->state == ST_GREETING || c->state == ST_USER || c->state == ST_PASS;
            while (c->fd >= 0 && take_line(c, &a, &b)) {
                int ok = is_ok(c, a, b);
                if (c->state == ST_GREETING && ok) {
                    conn_send(c, ST_USER, t, "USER %s", user_names[c->index % n_users]);
                } else if (c->state == ST_USER && ok) {
                    conn_send(c, ST_PASS, t, "PASS %s", user_passwords[c->index % n_users]);
                } else if (c->state == ST_PASS && ok) {
                    c->state = ST_IDLE;
                    in_setup--;
                    held++;
                } else if (c->state == ST_QUIT && ok) {
                    c->state = ST_CLOSING;
                    c->deadline = t + CLOSE_TIMEOUT;
                } else {
                    count_error(c->state == ST_IDLE ? "data while idle" : "-ERR", c->in + a,
                                b - a);
                    if (setup) {
                        in_setup--;
                        failed++;
                    } else {
                        dropped++;
                    }
                    conn_close(c);
                }
            }
            if (c->fd < 0)
                continue;
            conn_compact(c);
            if (got & (GOT_EOF | GOT_ERROR) || events[k].events & EPOLLERR) {
                if (c->state == ST_CLOSING) {
                    quit_ok++;
                } else {
                    count_error(got & GOT_EOF ? "closed by server" : "socket error", NULL, 0);
                    if (setup) {
                        in_setup--;
                        failed++;
                    } else {
                        dropped++;
                    }
                }
                conn_close(c);
            }
        }
        continue;
    quit_all:
        phase = 2;
        phase_deadline = now() + 30;
        for (int i = 0; i < next; i++)
            if (conns[i].fd >= 0 && conns[i].state == ST_IDLE)
                conn_send(&conns[i], ST_QUIT, now(), "QUIT");
    }
    if (phase == 0) {
        printf("{\"ready\": false, \"held\": %d, \"failed\": %d, ", held, failed);
        print_errors(stdout);
        printf("}\n");
    }
    printf("{\"mode\": \"idle\", \"held\": %d, \"failed\": %d, \"dropped\": %d, "
           "\"quit_ok\": %d, \"setup_s\": %.3f, ",
           held, failed, dropped, quit_ok, setup_end ? setup_end - t0 : -1.0);
    print_errors(stdout);
    printf("}\n");
    return 0;
}

/* ------------------------------------------------------------------ fetch */

typedef struct {
    long msg;
    size_t off, len;
    double sent, done;
} retr_t;

typedef struct {
    double t_connect, t_greeting, t_pass_sent, t_pass_ok, t_stat_ok, t_list_ok, t_uidl_ok;
    double t_quit_sent, t_quit_ok, t_closed;
    long stat_count, stat_octets;
    int utf8_ok;
    size_t list_off, list_len, uidl_off, uidl_len;
    retr_t *retrs;
    long n_retrs, planned, next_retr;
    const char *error;
    char error_line[200];
} fetch_t;

static fetch_t *fetches;
static int fetch_utf8, fetch_list, fetch_uidl, fetch_retr, fetch_repeat;

static void fetch_fail(conn_t *c, const char *kind, size_t a, size_t b)
{
    fetch_t *f = &fetches[c->index];
    count_error(kind, c->in ? c->in + a : NULL, b - a);
    f->error = kind;
    size_t n = b - a < sizeof f->error_line - 1 ? b - a : sizeof f->error_line - 1;
    if (c->in && n)
        memcpy(f->error_line, c->in + a, n);
    f->error_line[n] = '\0';
    conn_close(c);
}

/* After STAT, LIST, UIDL or a RETR: the next command of the script. */
static void fetch_next(conn_t *c, double t)
{
    fetch_t *f = &fetches[c->index];
    if (c->state == ST_STAT && fetch_list) {
        conn_send(c, ST_LIST, t, "LIST");
    } else if ((c->state == ST_STAT || c->state == ST_LIST) && fetch_uidl) {
        conn_send(c, ST_UIDL, t, "UIDL");
    } else if (f->next_retr < f->planned) {
        long msg = f->next_retr % f->stat_count + 1;
        f->retrs[f->next_retr].msg = msg;
        f->retrs[f->next_retr].sent = t;
        f->next_retr++;
        conn_send(c, ST_RETR, t, "RETR %ld", msg);
    } else {
        f->t_quit_sent = t;
        conn_send(c, ST_QUIT, t, "QUIT");
    }
}

static void fetch_event(conn_t *c, uint32_t events, double t)
{
    fetch_t *f = &fetches[c->index];
    if (events & EPOLLOUT && conn_flush(c) < 0)
        return fetch_fail(c, "send", 0, 0);
    int got = conn_fill(c);
    for (;;) {
        size_t a, b, ba = 0, bb = 0;
        int multi = c->state == ST_LIST || c->state == ST_UIDL || c->state == ST_RETR;
        if (multi ? !take_multi(c, &a, &b, &ba, &bb) : !take_line(c, &a, &b))
            break;
        int ok = is_ok(c, a, b);
        switch (c->state) {
        case ST_GREETING:
            if (!ok)
                return fetch_fail(c, "greeting -ERR", a, b);
            f->t_greeting = t;
            if (fetch_utf8)
                conn_send(c, ST_UTF8, t, "UTF8");
            else
                conn_send(c, ST_USER, t, "USER %s", user_names[c->index % n_users]);
            break;
        case ST_UTF8:
            f->utf8_ok = ok; /* servers without RFC 6856 say -ERR: fine */
            conn_send(c, ST_USER, t, "USER %s", user_names[c->index % n_users]);
            break;
        case ST_USER:
            if (!ok)
                return fetch_fail(c, "USER -ERR", a, b);
            f->t_pass_sent = t;
            conn_send(c, ST_PASS, t, "PASS %s", user_passwords[c->index % n_users]);
            break;
        case ST_PASS:
            if (!ok)
                return fetch_fail(c, "PASS -ERR", a, b);
            f->t_pass_ok = t;
            conn_send(c, ST_STAT, t, "STAT");
            break;
        case ST_STAT:
            if (!ok || sscanf(c->in + a, "+OK %ld %ld", &f->stat_count, &f->stat_octets) != 2)
                return fetch_fail(c, "STAT", a, b);
            f->t_stat_ok = t;
            f->planned = fetch_retr ? f->stat_count * fetch_repeat : 0;
            f->retrs = xrealloc(NULL, sizeof(retr_t) * (size_t)(f->planned + 1));
            fetch_next(c, t);
            break;
        case ST_LIST:
            if (!ok)
                return fetch_fail(c, "LIST -ERR", a, b);
            f->t_list_ok = t;
            f->list_off = ba;
            f->list_len = bb - ba;
            fetch_next(c, t);
            break;
        case ST_UIDL:
            if (!ok)
                return fetch_fail(c, "UIDL -ERR", a, b);
            f->t_uidl_ok = t;
            f->uidl_off = ba;
            f->uidl_len = bb - ba;
            fetch_next(c, t);
            break;
        case ST_RETR: {
            if (!ok)
                return fetch_fail(c, "RETR -ERR", a, b);
            retr_t *r = &f->retrs[f->n_retrs++];
            r->off = ba;
            r->len = bb - ba;
            r->done = t;
            fetch_next(c, t);
            break;
        }
        case ST_QUIT:
            if (!ok)
                return fetch_fail(c, "QUIT -ERR", a, b);
            f->t_quit_ok = t;
            c->state = ST_CLOSING;
            c->deadline = t + CLOSE_TIMEOUT;
            break;
        default:
            return fetch_fail(c, "data after QUIT", a, b);
        }
    }
    if (got & GOT_EOF) {
        if (c->state == ST_CLOSING) {
            f->t_closed = t;
            conn_close(c);
        } else {
            fetch_fail(c, "closed early", 0, 0);
        }
    } else if (got & GOT_ERROR || events & EPOLLERR) {
        fetch_fail(c, "socket error", 0, 0);
    }
}

static conn_t *fetch_conns;

/* Writes what each session received to PREFIX.<session>, freeing as it goes. */
static void fetch_write(const char *prefix, int n)
{
    for (int i = 0; i < n; i++) {
        conn_t *c = &fetch_conns[i];
        char path[4096];
        snprintf(path, sizeof path, "%s.%d", prefix, i);
        FILE *out = fopen(path, "wb");
        if (!out)
            die("cannot write %s: %s", path, strerror(errno));
        if (c->len && fwrite(c->in, 1, c->len, out) != c->len)
            die("cannot write %s: %s", path, strerror(errno));
        if (fclose(out) != 0)
            die("cannot write %s: %s", path, strerror(errno));
        free(c->in);
        c->in = NULL;
    }
}

static int run_fetch(void)
{
    set_target((int)opt_num("port", NULL));
    load_users(opt_str("users", NULL));
    fetch_utf8 = (int)opt_num("utf8", "1");
    fetch_list = (int)opt_num("list", "1");
    fetch_uidl = (int)opt_num("uidl", "1");
    const char *retr = opt_str("retr", "all");
    fetch_retr = !strcmp(retr, "all");
    if (!fetch_retr && strcmp(retr, "none"))
        die("retr= is all or none");
    fetch_repeat = (int)opt_num("repeat", "1");
    const char *prefix = opt_str("out", "");
    double limit = opt_num("limit", "3600");
    int n = n_users;
    raise_fd_limit(n);
    fetch_conns = calloc((size_t)n, sizeof(conn_t));
    fetches = calloc((size_t)n, sizeof(fetch_t));
    if (!fetch_conns || !fetches)
        die("out of memory");
    double t0 = now(), cpu0 = cpu_seconds();
    for (int i = 0; i < n; i++) {
        conn_t *c = &fetch_conns[i];
        c->index = i;
        c->keep = 1;
        c->fd = -1;
        fetches[i].t_connect = now();
        if (conn_open(c, fetches[i].t_connect) < 0)
            fetch_fail(c, "connect", 0, 0);
    }
    struct epoll_event events[MAX_EVENTS];
    double last_check = t0;
    for (;;) {
        double t = now();
        int active = 0;
        for (int i = 0; i < n; i++)
            if (fetch_conns[i].fd >= 0) {
                active++;
                if (t - last_check >= 0.1 && fetch_conns[i].deadline < t)
                    fetch_fail(&fetch_conns[i], "timeout", 0, 0);
            }
        if (t - last_check >= 0.1)
            last_check = t;
        if (!active)
            break;
        if (t >= t0 + limit) {
            for (int i = 0; i < n; i++)
                if (fetch_conns[i].fd >= 0)
                    fetch_fail(&fetch_conns[i], "time limit", 0, 0);
            break;
        }
        int k = epoll_wait(epfd, events, MAX_EVENTS, 100);
        if (k < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        t = now();
        for (int j = 0; j < k; j++) {
            conn_t *c = events[j].data.ptr;
            if (c->fd >= 0)
                fetch_event(c, events[j].events, t);
        }
    }
    double t1 = now(), cpu1 = cpu_seconds();
    printf("{\"mode\": \"fetch\", \"t_start\": %.6f, \"t_end\": %.6f, \"cpu_s\": %.4f, ", t0, t1,
           cpu1 - cpu0);
    print_errors(stdout);
    printf(", \"sessions\": [");
    for (int i = 0; i < n; i++) {
        fetch_t *f = &fetches[i];
        printf("%s\n{\"user\": ", i ? "," : "");
        json_string(stdout, user_names[i], strlen(user_names[i]));
        printf(", \"error\": ");
        if (f->error) {
            json_string(stdout, f->error, strlen(f->error));
            printf(", \"error_line\": ");
            json_string(stdout, f->error_line, strlen(f->error_line));
        } else {
            printf("null");
        }
        printf(", \"t_connect\": %.6f, \"t_greeting\": %.6f, \"t_pass_sent\": %.6f, "
               "\"t_pass_ok\": %.6f, \"t_stat_ok\": %.6f, \"t_list_ok\": %.6f, "
               "\"t_uidl_ok\": %.6f, \"t_quit_sent\": %.6f, \"t_quit_ok\": %.6f, "
               "\"t_closed\": %.6f, ",
               f->t_connect, f->t_greeting, f->t_pass_sent, f->t_pass_ok, f->t_stat_ok,
               f->t_list_ok, f->t_uidl_ok, f->t_quit_sent, f->t_quit_ok, f->t_closed);
        printf("\"utf8_ok\": %s, \"stat_count\": %ld, \"stat_octets\": %ld, "
               "\"received\": %zu, \"list\": [%zu, %zu], \"uidl\": [%zu, %zu], \"retr\": [",
               f->utf8_ok ? "true" : "false", f->stat_count, f->stat_octets,
               fetch_conns[i].len, f->list_off, f->list_len, f->uidl_off, f->uidl_len);
        for (long r = 0; r < f->n_retrs; r++) {
            retr_t *x = &f->retrs[r];
            printf("%s[%ld, %zu, %zu, %.6f, %.6f]", r ? ", " : "", x->msg, x->off, x->len,
                   x->sent, x->done);
        }
        printf("]}");
    }
    printf("]}\n");
    fflush(stdout);
    if (*prefix)
        fetch_write(prefix, n);
    return 0;
}

/* ------------------------------------------------------------------ serve */

typedef struct {
    int fd;
    char in[1024];
    size_t in_len;
    char head[128];
    size_t head_len, head_off;
    const char *body;
    size_t body_len, body_off;
    int closing;
} peer_t;

static char *serve_message, *serve_list, *serve_uidl;
static size_t serve_message_len, serve_list_len, serve_uidl_len;
static long serve_count, serve_size;

static void serve_prepare(void)
{
    /* A message of 76-character lines (no dots at line starts) plus ".CRLF". */
    serve_message = xrealloc(NULL, (size_t)serve_size + 128);
    size_t n = 0;
    while (n + 78 <= (size_t)serve_size) {
        for (int i = 0; i < 76; i++, n++)
            serve_message[n] = (char)('A' + (n % 26));
        serve_message[n++] = '\r';
        serve_message[n++] = '\n';
    }
    memcpy(serve_message + n, "end\r\n.\r\n", 8);
    serve_message_len = n + 8;
    serve_list = xrealloc(NULL, (size_t)serve_count * 40 + 8);
    serve_uidl = xrealloc(NULL, (size_t)serve_count * 40 + 8);
    for (long i = 1; i <= serve_count; i++) {
        serve_list_len += (size_t)sprintf(serve_list + serve_list_len, "%ld %zu\r\n", i,
                                          serve_message_len - 3);
        serve_uidl_len +=
            (size_t)sprintf(serve_uidl + serve_uidl_len, "%ld uid%08ld\r\n", i, i);
    }
    memcpy(serve_list + serve_list_len, ".\r\n", 3);
    serve_list_len += 3;
    memcpy(serve_uidl + serve_uidl_len, ".\r\n", 3);
    serve_uidl_len += 3;
}

static void peer_close(peer_t *p)
{
    close(p->fd);
    free(p);
}

/* Writes the pending reply; 1 when all went out, 0 when it must wait, -1 on error. */
static int peer_flush(peer_t *p)
{
    while (p->head_off < p->head_len || p->body_off < p->body_len) {
        const char *src;
        size_t left;
        if (p->head_off < p->head_len) {
            src = p->head + p->head_off;
            left = p->head_len - p->head_off;
        } else {
            src = p->body + p->body_off;
            left = p->body_len - p->body_off;
        }
        ssize_t n = send(p->fd, src, left, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = p};
            epoll_ctl(epfd, EPOLL_CTL_MOD, p->fd, &ev);
            return 0;
        }
        if (n <= 0)
            return -1;
        if (p->head_off < p->head_len)
            p->head_off += (size_t)n;
        else
            p->body_off += (size_t)n;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = p};
    epoll_ctl(epfd, EPOLL_CTL_MOD, p->fd, &ev);
    return 1;
}

static void peer_reply(peer_t *p, const char *line)
{
    if (!strncasecmp(line, "STAT", 4)) {
        p->head_len = (size_t)snprintf(p->head, sizeof p->head, "+OK %ld %ld\r\n", serve_count,
                                       serve_count * (long)(serve_message_len - 3));
    } else if (!strncasecmp(line, "LIST", 4)) {
        p->head_len = (size_t)snprintf(p->head, sizeof p->head, "+OK\r\n");
        p->body = serve_list;
        p->body_len = serve_list_len;
    } else if (!strncasecmp(line, "UIDL", 4)) {
        p->head_len = (size_t)snprintf(p->head, sizeof p->head, "+OK\r\n");
        p->body = serve_uidl;
        p->body_len = serve_uidl_len;
    } else if (!strncasecmp(line, "RETR", 4)) {
        p->head_len = (size_t)snprintf(p->head, sizeof p->head, "+OK %zu octets\r\n",
                                       serve_message_len - 3);
        p->body = serve_message;
        p->body_len = serve_message_len;
    } else if (!strncasecmp(line, "QUIT", 4)) {
        p->head_len = (size_t)snprintf(p->head, sizeof p->head, "+OK bye\r\n");
        p->closing = 1;
    } else {
        p->head_len = (size_t)snprintf(p->head, sizeof p->head, "+OK\r\n");
    }
    p->head_off = p->body_off = 0;
    if (!p->body)
        p->body_len = 0;
}

static int run_serve(void)
{
    serve_count = (long)opt_num("count", "2000");
    serve_size = (long)opt_num("size", "50000");
    double limit = opt_num("limit", "3600");
    if (serve_count < 1 || serve_size < 100)
        die("count >= 1 and size >= 100, please");
    raise_fd_limit(4096);
    serve_prepare();
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    set_target((int)opt_num("port", "0"));
    if (bind(lfd, (struct sockaddr *)&server, sizeof server) < 0 || listen(lfd, 4096) < 0)
        die("cannot listen: %s", strerror(errno));
    socklen_t sl = sizeof server;
    getsockname(lfd, (struct sockaddr *)&server, &sl);
    printf("{\"port\": %d}\n", ntohs(server.sin_port));
    fflush(stdout);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    double stop = now() + limit;
    struct epoll_event events[MAX_EVENTS];
    while (now() < stop) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, 200);
        for (int k = 0; k < n; k++) {
            peer_t *p = events[k].data.ptr;
            if (p == NULL) {
                for (int i = 0; i < 64; i++) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    peer_t *q = calloc(1, sizeof(peer_t));
                    if (!q)
                        die("out of memory");
                    q->fd = fd;
                    struct epoll_event e2 = {.events = EPOLLIN, .data.ptr = q};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e2);
                    q->head_len = (size_t)snprintf(q->head, sizeof q->head, "+OK calibration\r\n");
                    if (peer_flush(q) < 0)
                        peer_close(q);
                }
                continue;
            }
            if (p->head_off < p->head_len || p->body_off < p->body_len) {
                int r = peer_flush(p);
                if (r < 0 || (r == 1 && p->closing))
                    peer_close(p);
                continue;
            }
            ssize_t got = recv(p->fd, p->in + p->in_len, sizeof p->in - p->in_len - 1, 0);
            if (got <= 0) {
                if (got == 0 || (errno != EAGAIN && errno != EINTR))
                    peer_close(p);
                continue;
            }
            p->in_len += (size_t)got;
            p->in[p->in_len] = '\0';
            char *eol = strstr(p->in, "\r\n");
            if (!eol) {
                if (p->in_len >= sizeof p->in - 1)
                    peer_close(p);
                continue;
            }
            *eol = '\0';
            p->body = NULL;
            peer_reply(p, p->in);
            /* One command at a time: the client does not pipeline. */
            p->in_len = 0;
            int r = peer_flush(p);
            if (r < 0 || (r == 1 && p->closing))
                peer_close(p);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    if (argc < 2)
        die("usage: popload churn|idle|fetch|serve key=value...");
    signal(SIGPIPE, SIG_IGN);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1: %s", strerror(errno));
    const char *mode = argv[1];
    if (!strcmp(mode, "churn")) {
        parse_options(argc, argv,
                      " port users clients start warmup duration expect max limit ");
        return run_churn();
    }
    if (!strcmp(mode, "idle")) {
        parse_options(argc, argv, " port users sessions parallel hold limit ");
        return run_idle();
    }
    if (!strcmp(mode, "fetch")) {
        parse_options(argc, argv, " port users utf8 list uidl retr repeat out limit ");
        return run_fetch();
    }
    if (!strcmp(mode, "serve")) {
        parse_options(argc, argv, " port count size limit ");
        return run_serve();
    }
    die("unknown mode %s", mode);
    return 2;
}
