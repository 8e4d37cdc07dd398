"""`flota node add` and `flota node uninstall`: a node daemon installed over SSH as a service.

ssh.py         connect (host keys pinned), run commands, SFTP
preflight.py   pure: the probe script, its output as facts, the problems in the way
wheelhouse.py  flota's wheel and the node's wheels for the host's platform, cached
service.py     pure: systemd units, launchd plists, start/stop commands
manifest.py    what add did (on the host) and how to reach it again (here)
add.py         preflight, then act, each step recorded; a failure undoes them
uninstall.py   undo by the manifest
commands.py    the typer commands
"""
