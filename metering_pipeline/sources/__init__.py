"""Reading raw usage from the source (a SQL table or a folder of files), and seeding it."""
