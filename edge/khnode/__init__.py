"""Kakehashi river water-level node firmware (MicroPython); ``khnode.node.main()`` runs one wake of the node."""

VERSION = "0.1.0"
