// The header from C++: it compiles with warnings as errors, and the calls link.
#include <cstdio>
#include <cstring>

#include "eventspool.h"

int main() {
    eventspool_spool *spool = nullptr;
    eventspool_status status = eventspool_emit(spool, "t", "1", 1, nullptr, nullptr);
    char message[128];
    eventspool_last_error(message, sizeof message);
    std::printf("%s %s %s\n", eventspool_version(), eventspool_status_name(status), message);
    return status == EVENTSPOOL_INVALID_ARGUMENT && std::strstr(message, "NULL") ? 0 : 1;
}
