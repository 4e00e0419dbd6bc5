"""Effects: processes (Packer, QEMU, qemu-img), files, downloads, SQLite. The core never imports these."""
