// peft_equi's LAMMPS pair style (peft/mace): the TorchScript side.
//
// A file written by peft_equi's export_lammps (or mace's create_lammps_model): a TorchScript
// module with forward(data, local_or_ghost, compute_virials) and the buffers r_max,
// num_interactions and atomic_numbers.  This header uses standard C++ types only, so that the
// LAMMPS side (pair_peft_mace.cpp) never includes libtorch's headers (both bundle a copy of
// the fmt library).
#ifndef PEFT_EQUI_MACE_MODEL_H
#define PEFT_EQUI_MACE_MODEL_H

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace peft_equi {

// The graph of one evaluation: nodes 0..n_local-1 are the atoms whose energy is wanted
// (LAMMPS's local atoms), the other nodes their neighbours (ghost atoms).  Edge k runs from
// node senders[k] to node receivers[k]; its vector is
//   positions[receiver] - positions[sender] + unit_shifts[k] . cell
// (cell: rows = lattice vectors; unit_shifts: integers, empty for none).
struct Graph {
  int64_t n_nodes = 0;
  int64_t n_local = 0;
  const double *positions = nullptr;    // n_nodes x 3, row-major (A)
  std::vector<int64_t> columns;         // per node: the model's element index
  std::vector<int64_t> senders, receivers;
  std::vector<double> unit_shifts;      // 3 per edge, or empty
  double cell[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
};

class MaceModel {
 public:
  // Loads a file; throws std::runtime_error with a one-line reason.
  explicit MaceModel(const std::string &path);
  ~MaceModel();
  MaceModel(const MaceModel &) = delete;
  MaceModel &operator=(const MaceModel &) = delete;

  double r_max() const { return r_max_; }
  int num_interactions() const { return num_interactions_; }
  const std::vector<int> &atomic_numbers() const { return atomic_numbers_; }
  const std::string &dtype_name() const { return dtype_name_; }

  // The energy of the local nodes (eV); forces (n_nodes x 3, eV/A) = -d(energy)/d(positions)
  // on every node, written to `forces`; the local nodes' energies to `node_energies` and the
  // virial -d(energy)/d(strain) (3 x 3, eV; positions and cell strained together) to `virial`,
  // each unless null.  Throws std::runtime_error when the model fails.
  double evaluate(const Graph &graph, double *forces, double *node_energies, double *virial);

 private:
  struct Module;
  std::unique_ptr<Module> module_;
  double r_max_ = 0.0;
  int num_interactions_ = 0;
  std::vector<int> atomic_numbers_;
  std::string dtype_name_;
};

}    // namespace peft_equi

#endif
