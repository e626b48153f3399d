"""Names from the config that reach SQL or the environment, and secrets that must not reach a message.

A table name is spliced into SQL (identifiers cannot be bound as parameters),
so only plain identifiers pass; an environment variable's name must be one a
shell could set; a password is masked, in every form it may take (plain or
URL-encoded), in any text the job or the tools print. Pure Python: the tools
import this without pyspark.

>>> is_sql_identifier("predictions"), is_sql_identifier("x; DROP TABLE y")
(True, False)
>>> bool(ENV_NAME.match("PG_PASSWORD")), bool(ENV_NAME.match("1X"))
(True, False)
>>> mask_secret("jdbc:postgresql://h/db?password=p%40ss", "p@ss")
'jdbc:postgresql://h/db?password=***'
"""

from __future__ import annotations

import re
from urllib.parse import quote

# a table name is spliced into SQL (identifiers cannot be bound), so only plain ones pass
_SQL_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_sql_identifier(name: str | None) -> bool:
    """A plain, unquoted SQL identifier of at most 63 characters (PostgreSQL's limit)."""
    return name is not None and _SQL_IDENTIFIER.match(name) is not None


def mask_secret(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` replaced by ``***`` in every form it may take there: plain and URL-encoded."""
    if not secret:
        return text
    for form in sorted({secret, quote(secret, safe=""), quote(secret)}, key=len, reverse=True):
        text = text.replace(form, "***")
    return text
