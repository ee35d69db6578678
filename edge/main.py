"""The node's entry point: the flash tool copies this file to the board's root as main.py."""

from khnode import node

node.main()
