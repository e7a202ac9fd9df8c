# Pinned by labctl (updateFile of "talos-1.9.1" in images/images.yaml).
talos_image_url      = "https://factory.talos.dev/image/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba/v1.9.0/metal-amd64.raw.xz"
talos_image_checksum = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
