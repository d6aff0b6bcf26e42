"""The embedded dev stack: local Postgres clusters from the machine's own binaries, migrations,
and the coordinator and participant services as supervised subprocesses."""
