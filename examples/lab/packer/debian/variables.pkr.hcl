# Pinned by labctl (updateFile of "debian-12-genericcloud" in images/images.yaml).
debian_image = "debian/debian-12-genericcloud-amd64.qcow2"
