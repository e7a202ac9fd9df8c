# Pinned by labctl (updateFile of "ubuntu-24.04" in images/images.yaml).
ubuntu_image_url = "https://cloud-images.ubuntu.com/releases/noble/release-20241120/ubuntu-24.04-server-cloudimg-amd64.img"
