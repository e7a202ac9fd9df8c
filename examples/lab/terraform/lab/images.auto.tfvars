# Pinned by labctl (updateFile of "ubuntu-24.04" in images/images.yaml).
ubuntu_image = "ubuntu/ubuntu-24.04-server-amd64.qcow2"
