"""dsaudit's command line: parse arguments, call `catalog`, render with rich. No SQL, no math."""
