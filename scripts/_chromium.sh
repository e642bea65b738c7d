# Sourced by scripts/test, scripts/bench and scripts/coverage-screenshot: Debian's chromium,
# the real browser that drives the coverage page's tests. Installed once (apt-get, as root);
# nothing is done or printed when it is there.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium (apt-get; once)"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
      echo "could not install chromium: the coverage page's browser tests will fail" >&2
    fi
  else
    echo "chromium is missing and cannot be installed here (not root, or no apt-get):" \
      "install Debian's chromium; the coverage page's browser tests need it" >&2
  fi
fi
