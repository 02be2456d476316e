// libpq's client API (Debian's libpq-dev). The include path comes from pkg-config's libpq
// entry; /usr/include/postgresql is where Debian puts it.
#include <libpq-fe.h>
