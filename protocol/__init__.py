# Lets the host install this folder as the package `isopress.protocol`; the
# firmware copies wire.py to the board as a plain module.
