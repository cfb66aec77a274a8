#!/bin/sh
# Finishes the workspace root filesystem. Runs as root inside the image, once, after the
# packages are installed: from the mmdebstrap customize hook (imagebuild) and from the
# Dockerfile. Both paths copy the agent and the Chromium policies in before this runs.
set -eu

# The unprivileged user that runs the agent, Xvfb and Chromium. Its home is a tmpfs at
# run time, so the directory here is only the mount point.
groupadd --gid 1000 strongroom
useradd --uid 1000 --gid 1000 --home-dir /home/strongroom --no-create-home \
    --shell /usr/sbin/nologin strongroom
install -d -m 0700 -o 1000 -g 1000 /home/strongroom

# Managed policies are read-only at run time. The per-session URL allowlist is the one
# file the agent writes: Chromium reads it through this symbolic link, and while the
# target is missing only the blocklist of "*" applies, so no site loads.
install -d -m 0755 /etc/chromium/policies/managed /etc/chromium/policies/recommended
ln -sf /tmp/strongroom-policy/session.json /etc/chromium/policies/managed/session.json

# No set-user-ID or set-group-ID programs: no-new-privileges makes them useless, and
# without the bits they cannot become useful if that option is ever lost.
find / -xdev -type f -perm /6000 -exec chmod ug-s {} +

# Nothing in the image needs these at run time.
rm -rf /var/cache/apt/archives/*.deb /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log \
    /var/cache/debconf/*-old /usr/share/doc-base
