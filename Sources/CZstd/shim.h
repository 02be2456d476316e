// zstd's streaming API (Debian's libzstd-dev), for archive files.
#include <zstd.h>
