#!/usr/bin/env bash
# Local equivalents of the production Dockerfile's base images, for machines
# that cannot pull them (no registry outside is reachable here). Made once,
# cached as tarballs under ~/.cache/casey-deploy/base-images, and loaded into
# the Docker engine of $DOCKER_HOST on every run (seconds when warm).
#
#   bash .ci/base-images.sh      then   source ~/.cache/casey-deploy/base-images/images.env
#
# images.env exports CASEY_RUST_IMAGE and CASEY_RUNTIME_IMAGE, the values for
# `docker build --build-arg RUST_IMAGE=... --build-arg RUNTIME_IMAGE=...`.
#
# - builder (stands in for rust:<version>-slim-bookworm): a minimal Debian
#   (debootstrap --variant=minbase of the suite in the Dockerfile's default
#   tag, from the Debian mirror apt is configured with) with gcc, libc6-dev
#   and ca-certificates, plus the host's Rust toolchain of the Dockerfile's
#   version at /usr/local/rust; CARGO_HOME=/usr/local/cargo as in the public
#   image. On top, one layer holds the crates of backend/Cargo.lock (registry
#   index and .crate files, fetched by cargo) with CARGO_NET_OFFLINE=true: the
#   build needs no network at all, and changes no line of the Dockerfile.
# - runtime (stands in for gcr.io/distroless/cc-debian12:nonroot): the files
#   of libc6, libgcc-s1, libgomp1, libstdc++6, libssl3, ca-certificates (the
#   bundle at /etc/ssl/certs/ca-certificates.crt), tzdata, netbase and
#   base-files from the same debootstrap, unpacked without dpkg as distroless
#   does; /etc/passwd with root, nobody and nonroot (65532); /tmp 1777; no
#   shell and no package manager; USER 65532:65532, WORKDIR /home/nonroot.
#
# Each cached part is keyed by a stamp: the hash of the shell function that
# makes it and of its inputs (suite, mirror, `rustc -vV`, Cargo.lock), so an
# edit here or a new toolchain remakes exactly what changed.
#
# Settings: CASEY_CACHE (default ~/.cache/casey-deploy), CASEY_DEBIAN_MIRROR
# (default: the first bookworm URI in /etc/apt/sources.list*).
# Needs: root (debootstrap), debootstrap, rustup or rustc of that version,
# cargo, docker with a reachable engine.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${CASEY_CACHE:-$HOME/.cache/casey-deploy}/base-images
DOCKERFILE=backend/Dockerfile
LOCKFILE=backend/Cargo.lock
ENV_FILE=$CACHE/images.env

say() { echo "base-images: $*" >&2; }
die() { say "$*"; exit 1; }
hash_of() { sha256sum | cut -c1-12; }
fresh_dir() { # DIR: an empty DIR; mounts a failed debootstrap left inside are released first
  { grep -o " $1/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$1"
  mkdir -p "$1"
}

# --- inputs -------------------------------------------------------------------------------------------
default_arg() { # NAME: the ARG's default in the Dockerfile
  sed -n "s/^ARG $1=//p" "$DOCKERFILE" | head -n1
}
RUST_DEFAULT=$(default_arg RUST_IMAGE)        # rust:1.95.0-slim-bookworm
RUNTIME_DEFAULT=$(default_arg RUNTIME_IMAGE)  # gcr.io/distroless/cc-debian12:nonroot
[[ $RUST_DEFAULT =~ ^rust:([0-9]+\.[0-9]+\.[0-9]+)-slim-([a-z]+)$ ]] \
  || die "cannot read the Rust version and Debian suite from 'ARG RUST_IMAGE=$RUST_DEFAULT' in $DOCKERFILE"
RUST_VERSION=${BASH_REMATCH[1]}
SUITE=${BASH_REMATCH[2]}
[[ $RUNTIME_DEFAULT == *distroless/cc-debian12:nonroot ]] \
  || die "$DOCKERFILE's RUNTIME_IMAGE default is '$RUNTIME_DEFAULT'; this script makes an equivalent of distroless/cc-debian12:nonroot only"

debian_mirror() { # the URI apt uses for $SUITE (deb822 .sources or one-line sources.list)
  if [[ -n ${CASEY_DEBIAN_MIRROR:-} ]]; then echo "$CASEY_DEBIAN_MIRROR"; return; fi
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk -v suite="$SUITE" '
      /^[[:space:]]*$/ { if (uri && hit) { print uri; exit } uri = ""; hit = 0; next }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) hit = 1 }
      END { if (uri && hit) print uri }' "$f"
  done
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk -v suite="$SUITE" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i == suite && $(i-1) ~ /^[a-z]+:\/\//) print $(i-1) }' || true
}
MIRROR=$(debian_mirror)
MIRROR=${MIRROR%%$'\n'*}
[[ -n $MIRROR ]] || die "no Debian $SUITE mirror in /etc/apt/sources.list*; set CASEY_DEBIAN_MIRROR"

toolchain_dir() { # the sysroot of the host's Rust $RUST_VERSION
  local sysroot
  if command -v rustup >/dev/null && sysroot=$(rustup run "$RUST_VERSION" rustc --print sysroot 2>/dev/null); then
    echo "$sysroot"
  elif [[ $(rustc --version 2>/dev/null) == "rustc $RUST_VERSION "* ]]; then
    rustc --print sysroot
  else
    die "the builder needs Rust $RUST_VERSION on this machine (the version in $DOCKERFILE): rustup toolchain install $RUST_VERSION"
  fi
}

# --- the parts ----------------------------------------------------------------------------------------
# Each make_* function writes one cached file; its stamp hashes its own body.
make_rootfs() { # OUT: debootstrap's rootfs as a tarball, and the .deb files it used beside it
  local out=$1 work=$CACHE/work/rootfs
  command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install -y debootstrap (.ci/setup.sh installs it)"
  [[ $(id -u) == 0 ]] || die "debootstrap needs root"
  fresh_dir "$work"
  say "debootstrap $SUITE from $MIRROR (once; about a minute)"
  debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates,tzdata,netbase,libstdc++6,libssl3 \
    "$SUITE" "$work/root" "$MIRROR" >"$CACHE/work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$CACHE/work/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/work/debootstrap.log)"; }
  rm -rf "${out%.tar}.debs"; mkdir -p "${out%.tar}.debs"
  mv "$work/root/var/cache/apt/archives/"*.deb "${out%.tar}.debs/"
  # The engine provides /dev; the slim images carry no docs or translations either.
  rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/log/"* "$work/root/tmp/"* "$work/root/dev/"* \
    "$work/root/usr/share/doc/"* "$work/root/usr/share/man/"* "$work/root/usr/share/locale/"*
  tar --numeric-owner -C "$work/root" -cf "$out.part" .
  mv "$out.part" "$out"
  fresh_dir "$work" && rm -rf "$work"
}

make_builder() { # NAME ROOTFS TOOLCHAIN: import rootfs + toolchain at /usr/local/rust as NAME
  local name=$1 rootfs=$2 toolchain=$3 work=$CACHE/work/builder
  fresh_dir "$work/root"
  say "builder: $SUITE + gcc + Rust $RUST_VERSION from $toolchain"
  tar -C "$work/root" -xf "$rootfs"
  mkdir -p "$work/root/usr/local/rust" "$work/root/usr/local/cargo/bin"
  # Documentation is most of a toolchain's size and no build needs it.
  tar -C "$toolchain" --exclude=./share/doc --exclude=./share/man -cf - . | tar -C "$work/root/usr/local/rust" -xf -
  tar --numeric-owner -C "$work/root" -cf - . | docker import \
    --change "ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV CARGO_HOME=/usr/local/cargo" \
    --change "ENV RUST_VERSION=$RUST_VERSION" \
    --change 'CMD ["bash"]' \
    - "$name" >/dev/null
  rm -rf "$work"
}

make_crates_layer() { # NAME BASE CRATES: BASE + the crates in CARGO_HOME, offline
  local name=$1 base=$2 crates=$3
  say "crates layer on the builder"
  printf '%s\n' 'ARG BASE' 'FROM ${BASE}' 'COPY . /usr/local/cargo/registry/' 'ENV CARGO_NET_OFFLINE=true' \
    >"$CACHE/work/crates.Dockerfile"
  local out
  out=$(docker build --quiet --network none --build-arg "BASE=$base" -t "$name" -f "$CACHE/work/crates.Dockerfile" \
    "$crates" 2>&1) || { echo "$out" >&2; die "the crates layer did not build"; }
  rm -f "$CACHE/work/crates.Dockerfile"
}

make_runtime() { # NAME DEBS: import the distroless cc nonroot equivalent as NAME
  local name=$1 debs=$2 work=$CACHE/work/runtime root pkg deb
  root=$work/root; fresh_dir "$root"
  say "runtime: distroless cc-debian12:nonroot equivalent from $(basename "$debs")"
  for pkg in base-files libc6 libgcc-s1 libgomp1 libstdc++6 libssl3 ca-certificates tzdata netbase; do
    deb=$(find "$debs" -name "${pkg}_*.deb" | head -n1)
    [[ -n $deb ]] || die "no $pkg .deb in $debs; remove $CACHE and run again"
    dpkg-deb -x "$deb" "$root"
  done
  rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/lintian" \
    "$root/usr/sbin"
  mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/root" "$root/home/nonroot" "$root/var/lib/dpkg/status.d"
  # What update-ca-certificates would write (the bundle the AWS SDK reads).
  find "$root/usr/share/ca-certificates/mozilla" -name '*.crt' | sort | xargs cat >"$root/etc/ssl/certs/ca-certificates.crt"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'tty:x:5:' 'staff:x:50:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$root/etc/group"
  printf '%s\n' 'hosts: files dns' 'networks: files' 'passwd: files' 'group: files' >"$root/etc/nsswitch.conf"
  # Package names and versions for image scanners, as distroless records them.
  for deb in "$debs"/*.deb; do
    pkg=$(dpkg-deb -f "$deb" Package)
    case " base-files libc6 libgcc-s1 libgomp1 libstdc++6 libssl3 ca-certificates tzdata netbase " in
      *" $pkg "*) dpkg-deb -f "$deb" >"$root/var/lib/dpkg/status.d/$pkg" ;;
    esac
  done
  chmod 1777 "$root/tmp"; chmod 700 "$root/root" "$root/home/nonroot"
  chown 65532:65532 "$root/home/nonroot"
  [[ ! -e $root/bin/sh && ! -e $root/usr/bin/sh ]] || die "the runtime image must have no shell"
  tar --numeric-owner -C "$root" -cf - . | docker import \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
    --change "USER 65532:65532" \
    --change "WORKDIR /home/nonroot" \
    - "$name" >/dev/null
  rm -rf "$work"
}

make_crates() { # OUT: CARGO_HOME/registry (index + .crate files) for backend/Cargo.lock
  local out=$1 home=$CACHE/work/cargo-home
  rm -rf "$home" "$out"
  say "crates of $LOCKFILE (cargo fetch)"
  CARGO_HOME=$home cargo fetch --locked --target x86_64-unknown-linux-gnu --manifest-path backend/Cargo.toml >&2
  mkdir -p "$out"
  # The unpacked sources are remade by cargo in the build; keep what it downloaded.
  mv "$home/registry/index" "$home/registry/cache" "$out/"
  rm -rf "$home"
}

make_images() { # OUT: the builder (with its crates layer) and the runtime, made and `docker save`d to OUT
  local out=$1 builder_base=$RUST_IMAGE-base
  make_builder "$builder_base" "$rootfs" "$TOOLCHAIN"
  make_crates_layer "$RUST_IMAGE" "$builder_base" "$crates"
  make_runtime "$RUNTIME_IMAGE" "${rootfs%.tar}.debs"
  say "docker save to $(basename "$out")"
  docker save -o "$out.part" "$RUST_IMAGE" "$RUNTIME_IMAGE"
  mv "$out.part" "$out"
}

cached() { # FILE MAKER ARGS...: run MAKER FILE ARGS... unless FILE exists; drop older versions of it
  local file=$1 maker=$2; shift 2
  if [[ ! -e $file ]]; then
    local prefix=${file%-*}
    rm -rf "$prefix"-*
    "$maker" "$file" "$@"
  fi
}

# --- main ---------------------------------------------------------------------------------------------
command -v docker >/dev/null || die "the docker CLI is missing"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || die "no Docker engine at ${DOCKER_HOST:-the default socket}: bash .ci/docker.sh start; source \"\$(bash .ci/docker.sh env)\""
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9  # one maker at a time; a second run waits and then finds the cache warm

started=$SECONDS
TOOLCHAIN=$(toolchain_dir)
RUSTC_VV=$(PATH="$TOOLCHAIN/bin:$PATH" rustc -vV)
stamp_rootfs=$({ declare -f make_rootfs; echo "$SUITE $MIRROR"; } | hash_of)
stamp_crates=$({ declare -f make_crates; cat "$LOCKFILE"; } | hash_of)

rootfs=$CACHE/rootfs-$SUITE-$stamp_rootfs.tar
crates=$CACHE/crates-$stamp_crates
cached "$rootfs" make_rootfs
cached "$crates" make_crates

# Image names carry the stamp: a name present in the engine is the image this run would make.
stamp_images=$({ declare -f make_builder make_crates_layer make_runtime make_images
  echo "$stamp_rootfs $stamp_crates $RUSTC_VV"; } | hash_of)
RUST_IMAGE=casey-local/rust:$RUST_VERSION-slim-$SUITE-$stamp_images
RUNTIME_IMAGE=casey-local/distroless-cc-debian12:nonroot-$stamp_images
present() { docker image inspect "$1" >/dev/null 2>&1; }
if ! present "$RUST_IMAGE" || ! present "$RUNTIME_IMAGE"; then
  archive=$CACHE/images-$stamp_images.tar
  if [[ -e $archive ]]; then
    # `docker load`, not a new import: the same image ids every run, so docker's
    # layer cache of a build on these bases stays valid in a fresh engine.
    say "docker load $(basename "$archive")"
    docker load -q -i "$archive" >/dev/null
  else
    cached "$archive" make_images
  fi
fi

# Replaced in one step: another run may be reading it. A stale file (this run
# failed) names images the engine lacks, and the test says so.
cat >"$ENV_FILE.part" <<ENV
export CASEY_RUST_IMAGE=$RUST_IMAGE
export CASEY_RUNTIME_IMAGE=$RUNTIME_IMAGE
export CASEY_IMAGE_BUILD_CACHE=$CACHE/backend-build-cache.tar
ENV
mv "$ENV_FILE.part" "$ENV_FILE"
say "ready in $((SECONDS - started))s: RUST_IMAGE=$RUST_IMAGE RUNTIME_IMAGE=$RUNTIME_IMAGE"
say "wrote $ENV_FILE; use it with: source $ENV_FILE"
