"""What the `ci` client and the server share: standard library only.

The client installs without the server's dependencies and the server must not import the
client, so a piece both need lives here, where each may import it.
"""
