# Sourced by scripts/test and scripts/bench: Debian's chromium, the real browser that the
# coverage page's tests and benchmark drive. Installed once (apt-get, as root); quiet after.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium (apt-get; once)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing and cannot be installed here (not root, or no apt-get):" \
      "install Debian's chromium; the coverage page's browser tests need it" >&2
  fi
fi
