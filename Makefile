# popserv developer commands.  `make demo` and `make test` are all a fresh
# machine with Python 3.11+ needs: each creates .venv and installs into it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_ROOT ?= $(CURDIR)/demo-mail
# Ports of the demo on 127.0.0.1, if the defaults are taken:
#   make demo DEMO_PORT=2110        make demo-tls DEMO_PORT=2110 DEMO_TLS_PORT=2995
DEMO_PORT ?= 1110
DEMO_TLS_PORT ?= 1995
DEMO_LISTEN ?= tcp:$(DEMO_PORT):interface=127.0.0.1

# A development install that twistd can see: PEP 660 "strict"/default
# editable installs of a flat layout hide twisted/plugins/ from twistd's
# plugin scan, so use setuptools' compat mode, which puts the checkout on
# sys.path through a .pth file.
PIP_INSTALL := $(BIN)/pip install --disable-pip-version-check -q
EDITABLE := --config-settings editable_mode=compat -e

.PHONY: demo demo-tls test test-oldest lint docs bench clean install

# A target whose recipe fails is deleted, so the next make runs it again.
# Above all $(BIN)/python: when the pip upgrade after `venv` fails (the
# network, say), the virtualenv would otherwise count as made and stay
# without setuptools, which Python 3.12 and later no longer put in one.
.DELETE_ON_ERROR:

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip setuptools wheel

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(PIP_INSTALL) $(EDITABLE) '.[test,dev]'
	@touch $@

install: $(VENV)/.installed

demo: install
	@$(BIN)/python -m popserv.demo $(DEMO_ROOT)
	@echo "popserv demo on 127.0.0.1:$(DEMO_PORT) -- user 'demo', password 'demo'. Try:"
	@echo "    curl pop3://127.0.0.1:$(DEMO_PORT)/ -u demo:demo       (list)"
	@echo "    curl pop3://127.0.0.1:$(DEMO_PORT)/1 -u demo:demo      (retrieve message 1)"
	@echo "    python3 -c \"import poplib; p=poplib.POP3('127.0.0.1',$(DEMO_PORT)); p.user('demo'); p.pass_('demo'); print(p.list())\""
	@echo "Stop with Ctrl-C."
	$(BIN)/twistd -n --pidfile= popserv --listen $(DEMO_LISTEN) \
		--auth memory:demo:demo --mailstore 'maildir:$(DEMO_ROOT)/{user}'

# The demo with TLS: STLS on DEMO_PORT, implicit TLS on DEMO_TLS_PORT, a self-signed
# certificate for localhost and 127.0.0.1 in demo-mail/tls/.
demo-tls: install
	@$(BIN)/python -m popserv.demo --tls $(DEMO_ROOT)
	@echo "popserv demo with TLS -- user 'demo', password 'demo'. Try:"
	@echo "    curl --cacert $(DEMO_ROOT)/tls/cert.pem pop3s://127.0.0.1:$(DEMO_TLS_PORT)/1 -u demo:demo"
	@echo "    curl --cacert $(DEMO_ROOT)/tls/cert.pem --ssl-reqd pop3://127.0.0.1:$(DEMO_PORT)/ -u demo:demo"
	@echo "    openssl s_client -quiet -starttls pop3 -connect 127.0.0.1:$(DEMO_PORT)"
	@echo "Stop with Ctrl-C."
	$(BIN)/twistd -n --pidfile= popserv --listen $(DEMO_LISTEN) \
		--listen ssl:$(DEMO_TLS_PORT):interface=127.0.0.1 \
		--tls-cert $(DEMO_ROOT)/tls/cert.pem --tls-key $(DEMO_ROOT)/tls/key.pem \
		--auth memory:demo:demo --mailstore 'maildir:$(DEMO_ROOT)/{user}'

test: install
	$(BIN)/python -m pytest

# The unit tests against the oldest dependencies setup.cfg allows (the pins
# of .ci/oldest.txt), in a virtualenv of their own; .ci/run runs it.
OLDEST_VENV ?= .venv-oldest
test-oldest:
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/pip install --disable-pip-version-check -q -c .ci/oldest.txt $(EDITABLE) '.[test]'
	$(OLDEST_VENV)/bin/python -m pytest -m 'not integration'

lint: install
	$(BIN)/ruff check popserv tests benchmarks docs twisted
	$(BIN)/ruff format --check popserv tests benchmarks docs twisted
	$(BIN)/mypy

docs: install
	$(BIN)/sphinx-build -W -q -b html docs docs/_build/html

bench: install
	$(BIN)/python benchmarks/bench_maildir.py

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .venv-oldest-* docs/_build build dist *.egg-info twisted/plugins/dropin.cache
