// peft_equi's LAMMPS pair style for MACE models, adapted or not: pair_style peft/mace.
//
//   pair_style peft/mace
//   pair_coeff * * model-lammps.pt H C O      # one element per LAMMPS atom type
//
// The model file is what peft_equi's export_lammps writes (merged or unmerged adapters,
// float32 or float64).  The graph has one of two forms, chosen by the number of processes:
//
// * one process: the local atoms only; a neighbour that is a ghost atom (a periodic image)
//   becomes an edge to the atom it is an image of, with that image's lattice shift, as the
//   model saw periodic structures in training.  The virial is the model's strain derivative.
// * several processes (domain decomposition): local and ghost atoms are nodes; ghost atoms
//   reach num_interactions * r_max (+ skin) beyond the sub-domain, so that the energy of
//   every local atom is exact.  Only what the local energies depend on is evaluated: nodes
//   within num_interactions edges of a local atom, and the edges into nodes within
//   num_interactions - 1.  Forces on ghost atoms go back to their owners (newton pair on);
//   the virial is sum_i r_i (x) f_i over local and ghost atoms.
#ifndef PEFT_EQUI_PAIR_PEFT_MACE_H
#define PEFT_EQUI_PAIR_PEFT_MACE_H

#include "pair.h"

#include <memory>
#include <vector>

namespace peft_equi {
class MaceModel;
struct Graph;
}

namespace LAMMPS_NS {

class PairPeftMace : public Pair {
 public:
  PairPeftMace(class LAMMPS *);
  ~PairPeftMace() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

 private:
  std::unique_ptr<peft_equi::MaceModel> model;
  std::vector<long> type_column;      // LAMMPS atom type -> the model's element index
  // per evaluation, reused
  std::vector<int> node_atom;                     // LAMMPS index of each node
  std::vector<double> positions, forces, node_energies;
  std::vector<int> owner_of_tag;                  // one process: local index of each atom ID
  std::vector<int> hops, node_of_atom;            // several processes: pruning

  bool decomposed() const;
  void allocate();
  void image_graph(peft_equi::Graph &graph);
  void ghost_graph(peft_equi::Graph &graph);
};

}    // namespace LAMMPS_NS

#endif
