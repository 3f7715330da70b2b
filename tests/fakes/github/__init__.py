"""A local GitHub REST API for tests: unmodified PyGithub talks to it over real HTTP on 127.0.0.1.

It covers the endpoints sregraph uses, with GitHub's documented JSON shapes and habits that clients trip on:

- absolute `url` fields and `Link` pagination headers built from the server's own host and port (PyGithub
  follows them and checks the host), `per_page` capped by `max_per_page` so small pages exercise pagination;
- pull requests are issues too: they share the number sequence and appear in `GET /issues` with a
  `pull_request` key; list endpoints omit fields only the single-object endpoints return (`merged`,
  `mergeable`), and an open PR carries a test-merge `merge_commit_sha`;
- `X-RateLimit-*` headers on every answer, a primary limit that refuses with 403 until the reset time,
  weak `ETag`s and `304 Not Modified` (which costs no quota) for `If-None-Match`;
- a flat git model (blobs, commits, refs) behind the refs, contents, commits, pulls and merge endpoints;
- scriptable faults (`inject`): a burst of 502s, a 403 secondary rate limit with `Retry-After`, a 429, a
  slow answer that trips a client timeout, or a failure *after* the request took effect (the answer was
  lost on the way back, the case that doubles writes in naive clients).

Time comes from an injectable clock, so tests that fake sleeping can move the server's rate-limit window
along with the client's backoff.

One module per concern: `model.py` (records and pure helpers), `state.py` (the in-memory repository, URLs and
`Link` pages), `users.py` (accounts and permissions), `limits.py` (rate limit and scripted faults), `issues.py`
(issues, comments, labels), `git.py` (refs, contents, commits), `pulls.py` (pull requests and merges) and
`server.py` (`FakeGitHub`: the HTTP server, the request pipeline and the route table).
"""

from tests.fakes.github.model import Fault, GitCommit, HTTPError, Json, User, blob_sha
from tests.fakes.github.server import FakeGitHub
from tests.fakes.github.users import ROLES

__all__ = ["ROLES", "FakeGitHub", "Fault", "GitCommit", "HTTPError", "Json", "User", "blob_sha"]
