"""`flota dashboard`: the fleet's live web page.

command.py  the command: address checks, serving until Ctrl-C
app.py      the web application: the page, its files, the API behind the access check
auth.py     the access token, its cookie, cross-site refusals, security headers
tls.py      HTTPS: the user's certificate, or one the fleet's CA signs
coord.py    the coordinator's API, as the CLI calls it (grpc.aio)
feed.py     one event stream from the coordinator, fanned out to every page
api.py      JSON endpoints, the pages' event streams, the actions
diff.py     a job's change against its base, with the user's git
static/     the page: HTML, CSS, JavaScript modules (no build step)
"""

from cli.dashboard.command import dashboard

__all__ = ["dashboard"]
