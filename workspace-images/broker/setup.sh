#!/bin/sh
# Finishing steps of the broker image, shared by imagebuild's recipe and the Dockerfile.
set -eu

# Data directory owned by the unprivileged broker user; compose mounts a volume here.
install -d -m 0750 -o 10001 -g 10001 /var/lib/strongroom
