# The same build as bench/template.json, written by hand the way a Packer user would:
# the baseline `bench/bench_build.py` times `orchestrate build` against.
variable "base_image" { type = string }
variable "output_dir" { type = string }
variable "ssh_key" { type = string }
variable "seed_dir" { type = string }
variable "files_dir" { type = string }
variable "cpus" {
  type    = number
  default = 2 # Standard_B2s, as bench/bench_build.py's template
}
variable "memory" {
  type    = number
  default = 4096
}

source "qemu" "bench" {
  accelerator      = "tcg"
  headless         = true
  boot_wait        = "0s"
  cpus             = var.cpus
  memory           = var.memory
  disk_image       = true
  iso_url          = var.base_image
  iso_checksum     = "none"
  use_backing_file = true
  format           = "qcow2"
  disk_size        = "4096M"
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  qemu_img_args {
    create = ["-F", "qcow2"]
  }
  output_directory = var.output_dir
  vm_name          = "disk.qcow2"
  qemuargs = [
    ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
    ["-device", "virtio-net,netdev=user.0"],
  ]
  cd_files             = ["${var.seed_dir}/meta-data", "${var.seed_dir}/user-data"]
  cd_label             = "cidata"
  ssh_username         = "packer"
  ssh_private_key_file = var.ssh_key
  ssh_timeout          = "20m"
  shutdown_command     = "sudo shutdown -P now"
}

build {
  sources = ["source.qemu.bench"]

  provisioner "shell" {
    inline = ["sudo mkdir -p /opt/bench", "echo inline | sudo tee /opt/bench/inline.txt"]
  }
  provisioner "shell" {
    script = "${var.files_dir}/setup.sh"
  }
  provisioner "file" {
    source      = "${var.files_dir}/page.html"
    destination = "/tmp/page.html"
  }
  provisioner "shell" {
    inline = ["sudo cp /tmp/page.html /opt/bench/page.html"]
  }
  provisioner "shell" {
    inline     = ["sudo /usr/sbin/waagent -force -deprovision+user && export HISTSIZE=0 && sync"]
    skip_clean = true
  }
}
