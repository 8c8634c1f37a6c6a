"""What the program reads: manifest schema and loader, stack settings, errors, YAML I/O."""
