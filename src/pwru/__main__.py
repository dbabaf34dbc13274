from pwru.cli import entry

entry()
