"""Reading datasets back: the reader, get, export, verify and repair (docs/architecture.md)."""
