"""
The machinery of popserv's side-by-side benchmarks (benchmarks/bench_maildir.py):

 - L{suite.data}: generated Maildirs, the expected wire form, verification;
 - L{suite.servers}: one adapter per server (popserv, Dovecot, twisted.mail.pop3);
 - L{suite.load}: the C load generator (popload.c) and its wrappers;
 - L{suite.procfs}: CPU and memory readings from /proc;
 - L{suite.scenarios}: the workloads;
 - L{suite.report}: the table, ratios, targets and notes.
"""
