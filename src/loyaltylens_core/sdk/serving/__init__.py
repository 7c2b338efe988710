"""Files shipped inside model archives. ``inference.py`` runs inside serving containers;
the core only copies its text into archives and never imports it."""
