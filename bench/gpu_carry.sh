#!/usr/bin/env bash
# Prepares the folder that bench/gpu.sh needs on a GPU host with no apt and no internet: the
# Debian 12 packages the project builds and runs against (Abseil, nlohmann-json, SentencePiece,
# GoogleTest, gRPC + Protobuf + protoc + grpc_cpp_plugin, prometheus-cpp, libjpeg-turbo, libpng,
# tcmalloc_minimal, OpenSSL/zlib headers, pkg-config), unpacked with `dpkg -x` into an ignored
# folder that the device tool carries (`carry: [".gpu-debs"]`). Run it HERE (Debian 12), as any
# user: `apt-get download` needs no root. Nothing is installed into /.
#
# usage: bench/gpu_carry.sh [--dest DIR] [--max-mib N] [-h|--help]
#   --dest DIR    output folder (default: <repo>/.gpu-debs); DIR/root is the unpacked tree,
#                 DIR/MANIFEST.tsv lists package, version and size; DIR/root is replaced
#   --max-mib N   fail when the unpacked tree is larger than N MiB (default 45: the device tool
#                 carries at most 64 MiB with the working tree, which is about 15 MiB)
#
# Contract of the tree (what bench/gpu.sh relies on):
#   DIR/root/usr/{include,bin,lib/x86_64-linux-gnu}  headers, protoc + grpc_cpp_plugin + pkgconf,
#       shared libraries with their dev symlinks, CMake package configs (they compute their prefix
#       from their own location, so the tree is relocatable), pkg-config files rewritten to
#       `prefix=${pcfiledir}/...` (relocatable too).
#   DIR/root/hostlibs/  the runtime libraries an Ubuntu-like host normally has itself (zlib,
#       OpenSSL, libpng). They are NOT on the library path as carried: bench/gpu.sh links the dev
#       symlinks (libz.so, libssl.so, ...) to the host's copy when `ldconfig -p` lists the soname,
#       else to these, so an older Debian copy never shadows a newer host library.
#   DIR/root/usr/lib/x86_64-linux-gnu/sentencepiece/  libsentencepiece's runtime files, kept off
#       the library path (see sentencepiece_off_path); the dev symlinks point there.
#   DIR/root/usr/lib/x86_64-linux-gnu/cmake/CURL/CURLConfig.cmake is a stand-in (see
#   stub_curl_config), and files CMake imports but nothing uses are empty stand-ins.
#   Static archives are dropped where a shared library of the same name exists; docs, man pages,
#   unused gRPC plugins and OpenSSL engines are dropped; files a CMake targets file names are
#   always kept (CMake refuses a config whose imported files are missing).
#   The script fails when an ELF file of the tree needs a library that is neither in the tree
#   nor on the list of libraries every glibc host has (HOST_BASE below).
# Exit status: 0 ok, 1 failure (message on stderr), 2 usage error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=$ROOT/.gpu-debs
MAX_MIB=45

# Development packages (headers, dev symlinks, CMake/pkg-config files) and tools.
DEV_PACKAGES=(
  libabsl-dev nlohmann-json3-dev libsentencepiece-dev libgtest-dev libgmock-dev
  libgrpc++-dev libgrpc-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  prometheus-cpp-dev libcivetweb-dev libc-ares-dev libre2-dev
  libturbojpeg0-dev libpng-dev libgoogle-perftools-dev libssl-dev zlib1g-dev
  pkgconf pkgconf-bin
)
# Their runtime libraries.
RUNTIME_PACKAGES=(
  libabsl20220623 libsentencepiece0 libgrpc29 libgrpc++1.51 libprotobuf32 libprotobuf-lite32
  libprotoc32 libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libcivetweb1 libc-ares2
  libre2-9 libturbojpeg0 libtcmalloc-minimal4 libpkgconf3
  libprometheus-cpp-push1.0
)
# Carried only because a CMake targets file names them (CMake checks that imported files exist);
# nothing links them, so their own needs (libcurl) are not carried.
UNLINKED_RE='^libprometheus-cpp-push\.so'
# Files a CMake targets file names but that nothing here links or runs: replaced by empty files
# (CMake checks only that they exist; linking one would fail loudly). Saves 5 MiB.
STUB_FILES=(
  usr/lib/x86_64-linux-gnu/libgrpc_unsecure.so.29.0.0
  usr/lib/x86_64-linux-gnu/libgrpc++_unsecure.so.1.51.1
  usr/lib/x86_64-linux-gnu/libgrpcpp_channelz.so.1.51.1
  usr/bin/grpc_php_plugin usr/bin/grpc_python_plugin usr/bin/grpc_ruby_plugin
)
# Runtime libraries an Ubuntu-like host normally has: moved to root/hostlibs (see above).
HOSTLIB_PACKAGES=(zlib1g libssl3 libpng16-16)
HOSTLIB_SONAMES=(libz.so.1 libssl.so.3 libcrypto.so.3 libpng16.so.16)
# Dev symlinks that dangle once those are moved: name stem -> soname (bench/gpu.sh re-points them).
HOSTLIB_DEV_STEMS=(libz.so libssl.so libcrypto.so libpng16.so)
# Sonames every glibc host provides (never carried).
HOST_BASE_RE='^(ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|libstdc\+\+\.so\.6|libgcc_s\.so\.1)$'

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_carry.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --dest) DEST=$2; shift ;;
    --max-mib) MAX_MIB=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_carry.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ $MAX_MIB =~ ^[0-9]+$ ]] || { echo "gpu_carry.sh: --max-mib must be an integer" >&2; exit 2; }
[[ $DEST = /* ]] || DEST=$PWD/$DEST
for tool in apt-get dpkg-deb readelf; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install binutils dpkg)"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# download_all: every package into $work/debs (apt-get download: no root, the candidate version).
download_all() {
  mkdir -p "$work/debs"
  echo "== downloading ${#DEV_PACKAGES[@]} + ${#RUNTIME_PACKAGES[@]} + ${#HOSTLIB_PACKAGES[@]} packages"
  (cd "$work/debs" &&
   apt-get download -qq "${DEV_PACKAGES[@]}" "${RUNTIME_PACKAGES[@]}" "${HOSTLIB_PACKAGES[@]}" \
     2> >(grep -v 'unsandboxed as root' >&2)) ||
    die "apt-get download failed (run 'apt-get update' first?)"
}

# unpack_all: dpkg -x each .deb into $tree; writes $work/manifest.tsv (package, version, .deb bytes).
unpack_all() {
  rm -rf "$tree"
  mkdir -p "$tree"
  : > "$work/manifest.tsv"
  local deb
  for deb in "$work"/debs/*.deb; do
    dpkg-deb -x "$deb" "$tree"
    printf '%s\t%s\t%s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" \
      "$(stat -c %s "$deb")" >> "$work/manifest.tsv"
  done
}

# imported_files FILE...: the paths (relative to the prefix, usr/) that CMake targets files
# check for existence (their `list(APPEND _cmake_import_check_files_for_<target> ...)` lines).
imported_files() {
  grep -hiE 'list\(APPEND _(cmake_)?import_check_files_for_' "$@" 2>/dev/null |
    grep -oE '_IMPORT_PREFIX\}/[^" )]+' | sed 's|^_IMPORT_PREFIX}/||' | sort -u
}

# cmake_referenced: basenames of every file a CMake targets file of the tree imports.
cmake_referenced() {
  local files=()
  mapfile -d '' files < <(find "$tree" -name '*.cmake' -print0)
  imported_files "${files[@]}" | sed 's|.*/||' | sort -u
}

# stub_missing_imports: a CMake targets file refuses to load when a file it imports is missing,
# even one nobody uses (civetweb's targets name the civetweb server program of another package).
# Each missing one becomes an empty, non-executable file (linking or running it fails loudly).
stub_missing_imports() {
  local tf rel
  stubbed=()
  while IFS= read -r -d '' tf; do
    while IFS= read -r rel; do
      [[ -e $tree/usr/$rel || -L $tree/usr/$rel ]] && continue
      mkdir -p "$(dirname "$tree/usr/$rel")"
      : > "$tree/usr/$rel"
      chmod a-x "$tree/usr/$rel"
      stubbed+=("usr/$rel")
    done < <(imported_files "$tf")
  done < <(find "$tree" -name '*.cmake' -print0)
}

# prune: drop what neither the build nor the run needs.
prune() {
  local keep f base
  rm -rf "$tree"/usr/share/doc "$tree"/usr/share/man "$tree"/usr/share/lintian \
         "$tree"/usr/share/bug "$tree"/usr/share/doc-base "$tree"/usr/share/aclocal \
         "$tree"/usr/src
  # OpenSSL engines/providers: the project uses libcrypto's digests only.
  rm -rf "$tree"/usr/lib/x86_64-linux-gnu/engines-3 "$tree"/usr/lib/x86_64-linux-gnu/ossl-modules
  keep=$(cmake_referenced)
  for f in "${STUB_FILES[@]}"; do
    [[ -f $tree/$f ]] || die "stub candidate $f is not in the packages (update STUB_FILES)"
    : > "$tree/$f"
    chmod a-x "$tree/$f"
  done
  # gRPC plugins other than C++ that no CMake targets file names.
  for f in "$tree"/usr/bin/grpc_*_plugin; do
    base=$(basename "$f")
    [[ $base = grpc_cpp_plugin ]] && continue
    grep -qxF "$base" <<< "$keep" || rm -f "$f"
  done
  # Static archives with a shared library of the same name (libfoo.a beside libfoo.so).
  while IFS= read -r -d '' f; do
    base=$(basename "$f")
    grep -qxF "$base" <<< "$keep" && continue
    [[ -e ${f%.a}.so || -L ${f%.a}.so ]] && rm -f "$f"
  done < <(find "$tree" -name '*.a' -print0)
  # perftools: only tcmalloc_minimal is linked (the full tcmalloc/profiler runtime is not carried).
  rm -f "$tree"/usr/lib/x86_64-linux-gnu/lib{tcmalloc,tcmalloc_debug,tcmalloc_and_profiler,profiler}.{so,a}
  rm -f "$tree"/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal_debug.{so,a}
  rm -f "$tree"/usr/lib/x86_64-linux-gnu/pkgconfig/lib{tcmalloc,tcmalloc_debug,profiler,tcmalloc_minimal_debug}.pc
  find "$tree" -depth -type d -empty -delete
}

# move_hostlibs: the HOSTLIB_SONAMES files (and what they point to) into $tree/hostlibs.
move_hostlibs() {
  local lib soname real
  mkdir -p "$tree/hostlibs"
  for soname in "${HOSTLIB_SONAMES[@]}"; do
    lib=""
    for d in "$tree/usr/lib/x86_64-linux-gnu" "$tree/lib/x86_64-linux-gnu"; do
      [[ -e $d/$soname ]] && { lib=$d/$soname; break; }
    done
    [[ -n $lib ]] || die "$soname not found in the unpacked packages"
    real=$(readlink -f "$lib")
    cp -L "$lib" "$tree/hostlibs/$soname"
    rm -f "$lib"
    [[ $real = "$lib" ]] || rm -f "$real"
  done
  rm -rf "${tree:?}/lib"  # zlib1g's /lib/x86_64-linux-gnu (Debian 12 is not usr-merged in packages)
}

# stub_curl_config: prometheus-cpp's package config requires CURL (find_dependency) for its push
# library, which the project does not link. A CURLConfig.cmake with an empty CURL::libcurl
# satisfies it (CMake's FindCURL takes a CURL package config first), so no libcurl (and its
# dozen dependencies) is carried; a host that has libcurl's dev files is not consulted.
stub_curl_config() {
  local d=$tree/usr/lib/x86_64-linux-gnu/cmake/CURL
  mkdir -p "$d"
  cat > "$d/CURLConfig.cmake" <<'CMAKE'
# Written by bench/gpu_carry.sh: a stand-in for curl's package config. prometheus-cpp's config
# requires CURL for its push library, which SpecPrune does not link; CURL::libcurl links nothing.
if(NOT TARGET CURL::libcurl)
  add_library(CURL::libcurl INTERFACE IMPORTED)
endif()
set(CURL_VERSION "0-stub")
set(CURL_FOUND TRUE)
CMAKE
}

# sentencepiece_off_path: libsentencepiece's runtime files into usr/lib/x86_64-linux-gnu/
# sentencepiece/, with the dev symlinks pointing there. bench/gpu.sh puts the carried library folder
# on LD_LIBRARY_PATH, which outranks a RUNPATH: a libsentencepiece.so.0 there would replace the
# DF_SYMBOLIC copy that the tokenizer shim finds through its RUNPATH (model/CMakeLists.txt), and
# the original's protobuf-lite 3.14 would then bind to the process's libprotobuf 3.21 and abort.
sentencepiece_off_path() {
  local lib=$tree/usr/lib/x86_64-linux-gnu f base
  mkdir -p "$lib/sentencepiece"
  for f in "$lib"/libsentencepiece*.so.*; do
    mv "$f" "$lib/sentencepiece/"
  done
  for f in "$lib"/libsentencepiece*.so; do
    base=$(basename "$(readlink "$f")")
    ln -sfn "sentencepiece/$base" "$f"
  done
}

# fix_pkgconfig: prefix=/usr -> relative to the .pc file's own folder (pkg-config's ${pcfiledir}).
fix_pkgconfig() {
  local pc dir up
  # shellcheck disable=SC2016  # ${pcfiledir} is pkg-config's variable, written literally
  while IFS= read -r -d '' pc; do
    dir=$(dirname "$pc")
    case $dir in
      */usr/lib/x86_64-linux-gnu/pkgconfig) up='${pcfiledir}/../../..' ;;
      */usr/lib/pkgconfig|*/usr/share/pkgconfig) up='${pcfiledir}/../..' ;;
      *) die "unexpected pkg-config folder $dir" ;;
    esac
    # A file without a prefix variable (re2.pc) gets one, so that ${prefix} below is defined.
    grep -q '^prefix=' "$pc" || sed -i "1i prefix=/usr" "$pc"
    sed -i -e "s|^prefix=/usr\$|prefix=$up|" -e "s|^exec_prefix=/usr\$|exec_prefix=\${prefix}|" \
           -e "s|=/usr/|=\${prefix}/|" "$pc"
    if grep -nE '(^|[ =])/usr' "$pc" >&2; then die "absolute /usr path left in $pc"; fi
  done < <(find "$tree" -name '*.pc' -print0)
}

# fix_symlinks: absolute symlinks -> relative ones inside the tree; dangling links are listed
# (only the dev symlinks of HOSTLIB_SONAMES may dangle: bench/gpu.sh points them at the host).
fix_symlinks() {
  local link target rel
  while IFS= read -r -d '' link; do
    target=$(readlink "$link")
    if [[ $target = /* ]]; then
      rel=$(realpath -m --relative-to="$(dirname "$link")" "$tree$target")
      ln -sfn "$rel" "$link"
    fi
  done < <(find "$tree" -type l -print0)
  dangling=()
  local stem ok
  while IFS= read -r -d '' link; do
    [[ -e $link ]] && continue
    target=$(basename "$(readlink "$link")")
    ok=0
    for stem in "${HOSTLIB_DEV_STEMS[@]}"; do [[ $target = "$stem"* ]] && ok=1; done
    [[ $ok = 1 ]] || die "dangling symlink ${link#"$tree"/} -> $(readlink "$link")"
    dangling+=("${link#"$tree"/}")
  done < <(find "$tree" -type l -print0)
}

# check_needed: every NEEDED of every ELF file is in the tree, in hostlibs, or a base library.
check_needed() {
  local provided f needed magic missing=0
  provided=$(find "$tree" \( -type f -o -type l \) -name 'lib*.so*' -printf '%f\n' | sort -u)
  while IFS= read -r -d '' f; do
    magic=""
    IFS= read -r -n 4 magic < "$f" || true
    [[ $magic = $'\x7fELF' ]] || continue
    [[ $(basename "$f") =~ $UNLINKED_RE ]] && continue
    while IFS= read -r needed; do
      [[ $needed =~ $HOST_BASE_RE ]] && continue
      grep -qxF "$needed" <<< "$provided" && continue
      echo "gpu_carry.sh: ${f#"$tree"/} needs $needed, which is not carried" >&2
      missing=1
    done < <(readelf -d "$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  done < <(find "$tree" -type f \( -name '*.so*' -o -path '*/bin/*' \) -print0)
  [[ $missing = 0 ]] || die "the tree is not self-contained (see above)"
}

tree=$DEST/root
mkdir -p "$DEST"
download_all
unpack_all
prune
move_hostlibs
sentencepiece_off_path
fix_pkgconfig
fix_symlinks
stub_missing_imports
stub_curl_config
check_needed

{
  printf 'package\tversion\tdeb_bytes\n'
  sort "$work/manifest.tsv"
} > "$DEST/MANIFEST.tsv"
bytes=$(du -sb "$tree" | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
echo "== $(wc -l < "$work/manifest.tsv") packages unpacked into $tree"
echo "   empty stand-ins for files CMake imports but nothing uses: ${STUB_FILES[*]} ${stubbed[*]:-}"
echo "   dev symlinks left for bench/gpu.sh to point at the host's libraries: ${dangling[*]:-none}"
echo "   largest parts:"
du -s --block-size=1K "$tree"/usr/include/* "$tree"/usr/lib/x86_64-linux-gnu/* "$tree"/usr/bin \
  "$tree"/hostlibs 2>/dev/null | sort -rn | awk 'NR <= 8 {printf "     %6.1f MiB  %s\n", $1/1024, $2}'
echo "   total: $bytes bytes ($mib MiB; limit $MAX_MIB MiB)"
(( mib <= MAX_MIB )) || die "the tree is $mib MiB, over --max-mib $MAX_MIB"
