"""Operations the CLI and the daemon share (layer 6 of ARCHITECTURE.md, above the repository
API and the pipeline engine, which therefore do not use them).

Each module does one job on top of the repository API and returns values; none prints or
parses arguments (the CLI does), none speaks FUSE (the daemon does):

* ``branches`` — whether a ref names a commit, and "create the branch on first write";
* ``put`` — the steps of ``pfsfs put``: resolve the target, check the write policy, use the
  stat cache, transfer, commit;
* ``refresh`` — re-read branch heads, index what they reach, forget vanished objects;
* ``pipelines`` — stopping and starting a pipeline; deleting one with its jobs and (unless
  kept) its output repo.
"""
