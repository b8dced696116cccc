"""agents: the decorators users write (projections, command handlers, reactors, sagas)."""
