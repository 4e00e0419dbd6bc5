"""Effects: processes, files, downloads, SQLite, libvirt. The core never imports these."""
