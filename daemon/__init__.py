"""pfsfsd: the mount daemon of pfsfs (trio + pyfuse3), imported as ``pfsfsd``.

Modules, one job each:

- ``server``: the daemon process (lock, control socket, signals); ``control``: its request
  handlers; ``mounts``: one worker process per mount; ``recovery``: dead mounts.
- ``worker``: a mount's own process (FUSE session, snapshots, the final commit); ``fs``: the
  pyfuse3 operations (translation only) and the request loop, which polls for the next
  request for a while before it sleeps (``spinwait``).
- ``tree/``: the inode tree, composed of the inode table (``table``: loading, names, dirty
  marks), the ``journal`` (records, replay), ``namespace`` (lookup, create, link, unlink,
  rename) and ``content`` (setattr, read, write) over the types in ``nodes``, behind the
  ``Tree`` facade; ``pfsdir``: the hidden ``.pfs/``; ``chunkcache``: reads of committed
  content.
- ``staging``: the journal and staged data on local disk; ``snapshot``: build, commit, merge.
- ``mountinfo``: the kernel mount table; ``protocol``: JSON-lines messages.

Only ``worker`` and ``fs`` import pyfuse3; the ``pfsfs`` CLI never imports this package.
"""

__all__: list[str] = []
