"""Nuitka user plugin (--user-plugin): start-up without locale files, an error without /proc.

Nuitka's start-up code (before any Python code runs) called abort() — SIGABRT, exit 134,
no message — in two cases that minimal images hit:

- It converts the executable's directory to wide characters with the environment's
  locale, `newlocale(LC_CTYPE_MASK, "", 0)`, falling back to C.UTF-8 (appendStringSafeW,
  HelpersSafeStrings.c). With LANG or LC_ALL naming a UTF-8 locale in a rootfs without
  locale files, all of them fail: even `--version` died. setlocale(LC_ALL, "") leaves a C
  program in the "C" locale there, and python3 then runs in UTF-8 mode; our `newlocale`
  does the same: the environment's locale when it exists, else "C" (the directory names
  we ship under are ASCII).
- It finds its executable by `readlink("/proc/self/exe")` (HelpersFilesystemPaths.c),
  in the onefile bootstrap and in the program. Without /proc we print one line and exit 1.

The linker routes the calls to these wrappers: build.py links with
`-Wl,--wrap=newlocale,--wrap=readlink` (LDFLAGS, its WRAP_LDFLAGS), so compile flags,
and the C compiler cache, are unchanged.
"""
from nuitka.plugins.PluginBase import NuitkaPluginBase

SOURCE = r"""
#define _GNU_SOURCE  /* locale_t: the build is -std=c11 */
#include <errno.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

locale_t __real_newlocale(int category_mask, const char *locale, locale_t base);
ssize_t __real_readlink(const char *path, char *buf, size_t size);
locale_t __wrap_newlocale(int category_mask, const char *locale, locale_t base);
ssize_t __wrap_readlink(const char *path, char *buf, size_t size);

locale_t __wrap_newlocale(int category_mask, const char *locale, locale_t base) {
    locale_t result = __real_newlocale(category_mask, locale, base);
    if (result == (locale_t)0 && locale != NULL && locale[0] == '\0') {
        /* the environment names a locale that is not installed */
        result = __real_newlocale(category_mask, "C", base);
    }
    return result;
}

static int found_self = 0;

ssize_t __wrap_readlink(const char *path, char *buf, size_t size) {
    ssize_t result = __real_readlink(path, buf, size);
    if (!found_self && strcmp(path, "/proc/self/exe") == 0) {
        if (result == -1) {
            fprintf(stderr, "ctrappliance: cannot find its own executable: "
                    "readlink /proc/self/exe: %s (is /proc mounted?)\n", strerror(errno));
            exit(1);
        }
        found_self = 1;  /* later calls are the program's (os.readlink): errors as usual */
    }
    return result;
}
"""


class NuitkaPluginLibc(NuitkaPluginBase):
    plugin_name = "ctrappliance-libc"
    plugin_desc = "newlocale/readlink wrappers: no abort without locale files or /proc."

    def getExtraCodeFiles(self):
        # the program, and (names with "onefile_") the onefile bootstrap
        return {"ctrappliance_libc.c": SOURCE, "onefile_ctrappliance_libc.c": SOURCE}
