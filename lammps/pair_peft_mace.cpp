// peft_equi's LAMMPS pair style for MACE models: pair_style peft/mace (see pair_peft_mace.h).
#include "pair_peft_mace.h"

#include "mace_model.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "utils.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <exception>
#include <string>

using namespace LAMMPS_NS;

namespace {

// Chemical symbols by atomic number (index 0 unused).
const char *const SYMBOLS[] = {
    "",   "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si", "P",
    "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga",
    "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag",
    "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu",
    "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",  "Re", "Os", "Ir", "Pt", "Au",
    "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa", "U",  "Np", "Pu", "Am",
    "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf", "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg",
    "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};

int atomic_number(const std::string &symbol)
{
  const int n = sizeof(SYMBOLS) / sizeof(SYMBOLS[0]);
  for (int z = 1; z < n; ++z)
    if (symbol == SYMBOLS[z]) return z;
  return 0;
}

std::string element_list(const std::vector<int> &numbers)
{
  std::string out;
  for (int z : numbers) out += (out.empty() ? "" : " ") + std::string(z > 0 && z <= 118 ? SYMBOLS[z] : "?");
  return out;
}

}    // namespace

PairPeftMace::PairPeftMace(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  ghostneigh = 1;    // the graph includes ghost atoms and their neighbours
}

PairPeftMace::~PairPeftMace()
{
  if (copymode) return;
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

void PairPeftMace::allocate()
{
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) setflag[i][j] = 0;
}

void PairPeftMace::settings(int narg, char ** /*arg*/)
{
  if (narg != 0) error->all(FLERR, "pair_style peft/mace takes no arguments");
}

void PairPeftMace::coeff(int narg, char **arg)
{
  const int ntypes = atom->ntypes;
  if (narg != 3 + ntypes)
    error->all(FLERR, "pair_coeff * * <model file> <one element per atom type>: {} types, {} elements given",
               ntypes, narg - 3);
  if (std::strcmp(arg[0], "*") != 0 || std::strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_style peft/mace: pair_coeff must start with * *");
  if (!allocated) allocate();

  try {
    model = std::make_unique<peft_equi::MaceModel>(arg[2]);
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_style peft/mace: {}", e.what());
  }
  const std::vector<int> &numbers = model->atomic_numbers();
  type_column.assign(ntypes + 1, -1);
  for (int type = 1; type <= ntypes; ++type) {
    const std::string symbol = arg[2 + type];
    const int z = atomic_number(symbol);
    const auto found = std::find(numbers.begin(), numbers.end(), z);
    if (z == 0 || found == numbers.end())
      error->all(FLERR, "pair_style peft/mace: element {} (atom type {}) is not one of the model's elements ({})",
                 symbol, type, element_list(numbers));
    type_column[type] = found - numbers.begin();
  }
  for (int i = 1; i <= ntypes; ++i)
    for (int j = i; j <= ntypes; ++j) setflag[i][j] = 1;
  if (comm->me == 0)
    utils::logmesg(lmp, "pair_style peft/mace: {} ({}, r_max {} A, {} interactions, elements {})\n", arg[2],
                   model->dtype_name(), model->r_max(), model->num_interactions(), element_list(numbers));
}

bool PairPeftMace::decomposed() const
{
  return comm->nprocs > 1;
}

void PairPeftMace::init_style()
{
  if (!model) error->all(FLERR, "pair_style peft/mace: no model (pair_coeff * * <file> <elements>)");
  if (force->newton_pair == 0) error->all(FLERR, "pair_style peft/mace requires newton pair on");
  no_virial_fdotr_compute = 1;    // compute() tallies the virial of its graph itself
  if (!decomposed()) {
    neighbor->add_request(this, NeighConst::REQ_FULL);
    return;
  }
  neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
  // the energy of a local atom depends on every atom within num_interactions * r_max
  const double reach = model->num_interactions() * model->r_max() + neighbor->skin;
  comm->cutghostuser = std::max(comm->cutghostuser, reach);
}

double PairPeftMace::init_one(int i, int j)
{
  cutghost[i][j] = cutghost[j][i] = model->r_max();
  return model->r_max();
}

void PairPeftMace::image_graph(peft_equi::Graph &graph)
{
  const int nlocal = atom->nlocal;
  double **x = atom->x;
  const tagint *tag = atom->tag;
  tagint max_tag = 0;
  for (int i = 0; i < nlocal; ++i) max_tag = std::max(max_tag, tag[i]);
  owner_of_tag.assign(max_tag + 1, -1);
  for (int i = 0; i < nlocal; ++i) owner_of_tag[tag[i]] = i;

  node_atom.resize(nlocal);
  for (int i = 0; i < nlocal; ++i) node_atom[i] = i;
  graph.n_nodes = graph.n_local = nlocal;
  const double *h = domain->h;    // xprd, yprd, zprd, yz, xz, xy
  const double cell[9] = {h[0], 0.0, 0.0, h[5], h[1], 0.0, h[4], h[3], h[2]};
  std::copy(cell, cell + 9, graph.cell);
  const double cutoff_sq = model->r_max() * model->r_max();
  for (int ii = 0; ii < list->inum; ++ii) {
    const int i = list->ilist[ii];
    const int *neighbours = list->firstneigh[i];
    for (int jj = 0; jj < list->numneigh[i]; ++jj) {
      const int j = neighbours[jj] & NEIGHMASK;
      const double dx = x[i][0] - x[j][0], dy = x[i][1] - x[j][1], dz = x[i][2] - x[j][2];
      if (dx * dx + dy * dy + dz * dz >= cutoff_sq) continue;
      const int owner = j < nlocal ? j : (tag[j] <= max_tag ? owner_of_tag[tag[j]] : -1);
      if (owner < 0)
        error->one(FLERR, "pair_style peft/mace: ghost atom {} is no periodic image of a local atom", tag[j]);
      // x_j = x_owner + n . cell, n integer: solve the triangular system
      const double d[3] = {x[j][0] - x[owner][0], x[j][1] - x[owner][1], x[j][2] - x[owner][2]};
      const double n2 = std::round(d[2] / h[2]);
      const double n1 = std::round((d[1] - n2 * h[3]) / h[1]);
      const double n0 = std::round((d[0] - n1 * h[5] - n2 * h[4]) / h[0]);
      const double residual = std::fabs(d[0] - n0 * h[0] - n1 * h[5] - n2 * h[4]) +
          std::fabs(d[1] - n1 * h[1] - n2 * h[3]) + std::fabs(d[2] - n2 * h[2]);
      if (residual > 1e-6)
        error->one(FLERR, "pair_style peft/mace: ghost atom {} is off the lattice of its image", tag[j]);
      graph.senders.push_back(owner);
      graph.receivers.push_back(i);
      // vector = x_i - x_j = x_i - x_owner + (-n) . cell
      graph.unit_shifts.insert(graph.unit_shifts.end(), {-n0, -n1, -n2});
    }
  }
}

void PairPeftMace::ghost_graph(peft_equi::Graph &graph)
{
  double **x = atom->x;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const double cutoff_sq = model->r_max() * model->r_max();
  std::vector<int64_t> senders, receivers;    // over all atoms
  const int with_lists = list->inum + list->gnum;
  for (int ii = 0; ii < with_lists; ++ii) {
    const int i = list->ilist[ii];
    const int *neighbours = list->firstneigh[i];
    for (int jj = 0; jj < list->numneigh[i]; ++jj) {
      const int j = neighbours[jj] & NEIGHMASK;
      const double dx = x[i][0] - x[j][0], dy = x[i][1] - x[j][1], dz = x[i][2] - x[j][2];
      if (dx * dx + dy * dy + dz * dz < cutoff_sq) {
        senders.push_back(j);
        receivers.push_back(i);
      }
    }
  }
  // hops from the local atoms against the direction of the messages (sender -> receiver)
  const int layers = model->num_interactions();
  hops.assign(nall, INT_MAX);
  std::fill(hops.begin(), hops.begin() + nlocal, 0);
  for (int layer = 1; layer <= layers; ++layer)
    for (size_t k = 0; k < senders.size(); ++k)
      if (hops[receivers[k]] == layer - 1 && hops[senders[k]] > layer) hops[senders[k]] = layer;

  node_of_atom.assign(nall, -1);
  node_atom.clear();
  for (int i = 0; i < nall; ++i)
    if (hops[i] <= layers) {
      node_of_atom[i] = static_cast<int>(node_atom.size());
      node_atom.push_back(i);    // the local atoms first, in order
    }
  graph.n_nodes = static_cast<int64_t>(node_atom.size());
  graph.n_local = nlocal;
  for (size_t k = 0; k < senders.size(); ++k)
    if (hops[receivers[k]] < layers) {
      graph.senders.push_back(node_of_atom[senders[k]]);
      graph.receivers.push_back(node_of_atom[receivers[k]]);
    }
}

void PairPeftMace::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (vflag_atom) error->all(FLERR, "pair_style peft/mace does not compute per-atom virials");
  const int nlocal = atom->nlocal;
  if (nlocal == 0) return;    // no local energy, no forces from this process

  peft_equi::Graph graph;
  if (decomposed())
    ghost_graph(graph);
  else
    image_graph(graph);
  double **x = atom->x;
  positions.resize(3 * node_atom.size());
  graph.columns.resize(node_atom.size());
  for (size_t k = 0; k < node_atom.size(); ++k) {
    std::copy(x[node_atom[k]], x[node_atom[k]] + 3, &positions[3 * k]);
    graph.columns[k] = type_column[atom->type[node_atom[k]]];
  }
  graph.positions = positions.data();

  // one process: the model's strain derivative; several: sum_i r_i (x) f_i below
  const bool model_virial = vflag_global && !decomposed();
  double strain_derivative[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  forces.resize(3 * node_atom.size());
  node_energies.resize(nlocal);
  double energy = 0.0;
  try {
    energy = model->evaluate(graph, forces.data(), eflag_atom ? node_energies.data() : nullptr,
                             model_virial ? strain_derivative : nullptr);
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style peft/mace: {}", e.what());
  }

  double **f = atom->f;
  for (size_t k = 0; k < node_atom.size(); ++k)
    for (int c = 0; c < 3; ++c) f[node_atom[k]][c] += forces[3 * k + c];
  if (eflag_global) eng_vdwl += energy;
  if (eflag_atom)
    for (int i = 0; i < nlocal; ++i) eatom[i] += node_energies[i];
  if (model_virial) {
    const int order[6] = {0, 4, 8, 1, 2, 5};    // xx yy zz xy xz yz of the row-major 3 x 3
    for (int k = 0; k < 6; ++k) virial[k] += strain_derivative[order[k]];
  } else if (vflag_global) {
    // local and ghost atoms as independent particles (what LAMMPS's fdotr sums)
    for (size_t k = 0; k < node_atom.size(); ++k) {
      const double *r = &positions[3 * k], *fk = &forces[3 * k];
      virial[0] += r[0] * fk[0];
      virial[1] += r[1] * fk[1];
      virial[2] += r[2] * fk[2];
      virial[3] += r[0] * fk[1];
      virial[4] += r[0] * fk[2];
      virial[5] += r[1] * fk[2];
    }
  }
}
