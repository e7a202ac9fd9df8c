# Pinned by labctl (updateFile of "vyos-rolling" in images/images.yaml); a
# change here triggers the packer-vyos workflow, which builds
# output/vyos-lab.raw and uploads it as vyos/vyos-gateway.raw.
vyos_iso_url      = "https://github.com/vyos/vyos-nightly-build/releases/download/1.5-rolling-202412190007/vyos-1.5-rolling-202412190007-generic-amd64.iso"
vyos_iso_checksum = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
