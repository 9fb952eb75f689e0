"""
popserv as a twistd application file:

    twistd -ny popserv.tac

Serves user "alice" (password "secret") from the Maildirs under ./mail
(./mail/alice for alice; ./mail must exist), on the endpoint in the
environment variable POPSERV_LISTEN, by default tcp:1110 on 127.0.0.1.
"""

import os

from twisted.application.service import Application
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import endpoints, reactor

from popserv import MaildirStore, MaildropRealm, POP3ServerFactory
from popserv.credentials import normalizeChecker
from popserv.endpoints import withDefaultBacklog
from popserv.tap import Listener

listen = os.environ.get("POPSERV_LISTEN", "tcp:1110:interface=127.0.0.1")
checker = normalizeChecker(InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret"))
store = MaildirStore(os.path.join(os.path.abspath("mail"), "{user}"))
factory = POP3ServerFactory(Portal(MaildropRealm(store), [checker]))

application = Application("popserv")
# Listener is Twisted's StreamServerEndpointService, except that an address
# it cannot listen on ends the start (one line, exit status 1); Twisted's
# own would log the error and go on running without a listener.
endpoint = endpoints.serverFromString(reactor, withDefaultBacklog(listen))
Listener(listen, endpoint, factory).setServiceParent(application)
