"""Small shared helpers: errors, atomic writes, config handling, seeding."""
