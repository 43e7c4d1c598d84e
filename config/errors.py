"""The one class of user errors: what the user gave or asked for cannot work.

A config value, a missing checkpoint or image, an absent optional package, data that
does not fit the model: each is raised as a `UserError` whose message names the thing
and a way out, before any process group starts where it can be known then, and
config/cli.py turns it into one line on stderr and exit status 2. Anything else is
a failure of the run (exit 1) or a bug (a traceback).
"""


class UserError(ValueError):
    """Something the user gave or asked for cannot work; the message names it."""
