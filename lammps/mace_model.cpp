// peft_equi's LAMMPS pair style (peft/mace): the TorchScript side (see mace_model.h).
#include "mace_model.h"

#include <torch/script.h>

#include <cstring>
#include <stdexcept>

namespace peft_equi {

struct MaceModel::Module {
  torch::jit::Module jit;
  torch::Dtype dtype = torch::kFloat64;
};

namespace {

std::string first_line(const std::string &text) { return text.substr(0, text.find('\n')); }

torch::Tensor attribute(const torch::jit::Module &module, const char *name, const std::string &path)
{
  if (!module.hasattr(name) || !module.attr(name).isTensor())
    throw std::runtime_error(path + " has no tensor '" + name +
                             "': not a file written by peft_equi's export_lammps "
                             "(or mace's create_lammps_model)");
  return module.attr(name).toTensor();
}

// The model's float dtype: that of its first floating-point parameter (export_lammps casts the
// whole model to one dtype).
torch::Dtype model_dtype(const torch::jit::Module &module, const std::string &path)
{
  for (const auto &parameter : module.parameters())
    if (parameter.is_floating_point()) {
      if (parameter.scalar_type() == torch::kFloat64 || parameter.scalar_type() == torch::kFloat32)
        return parameter.scalar_type();
      throw std::runtime_error(path + ": parameters of dtype " +
                               std::string(c10::toString(parameter.scalar_type())) +
                               " (float32 or float64 expected)");
    }
  throw std::runtime_error(path + ": the model has no floating-point parameters");
}

torch::Tensor int64_tensor(const std::vector<int64_t> &values)
{
  torch::Tensor out = torch::empty({static_cast<int64_t>(values.size())}, torch::kInt64);
  if (!values.empty()) std::memcpy(out.data_ptr<int64_t>(), values.data(), values.size() * sizeof(int64_t));
  return out;
}

torch::Tensor output(const c10::impl::GenericDict &out, const char *key)
{
  if (!out.contains(key) || !out.at(key).isTensor())
    throw std::runtime_error(std::string("the model returned no '") + key + "'");
  return out.at(key).toTensor().detach().to(torch::kFloat64).contiguous();
}

}    // namespace

MaceModel::MaceModel(const std::string &path) : module_(std::make_unique<Module>())
{
  try {
    module_->jit = torch::jit::load(path, torch::kCPU);
  } catch (const c10::Error &e) {
    throw std::runtime_error("cannot load " + path + " as a TorchScript file: " +
                             first_line(e.what_without_backtrace()));
  }
  module_->jit.eval();
  // No shape specialisation or fusion (a setting of the process): the first steps are not
  // spent profiling and fusing, and the compiled model costs what the eager one does.
  torch::jit::FusionStrategy no_fusion = {{torch::jit::FusionBehavior::STATIC, 0},
                                          {torch::jit::FusionBehavior::DYNAMIC, 0}};
  torch::jit::setFusionStrategy(no_fusion);
  r_max_ = attribute(module_->jit, "r_max", path).item<double>();
  num_interactions_ = static_cast<int>(attribute(module_->jit, "num_interactions", path).item<int64_t>());
  torch::Tensor numbers = attribute(module_->jit, "atomic_numbers", path).to(torch::kInt64).contiguous();
  for (int64_t i = 0; i < numbers.numel(); ++i)
    atomic_numbers_.push_back(static_cast<int>(numbers.data_ptr<int64_t>()[i]));
  module_->dtype = model_dtype(module_->jit, path);
  dtype_name_ = module_->dtype == torch::kFloat64 ? "float64" : "float32";
}

MaceModel::~MaceModel() = default;

double MaceModel::evaluate(const Graph &graph, double *forces, double *node_energies, double *virial)
{
  torch::AutoGradMode grad_mode(true);    // forces are gradients of the energy
  const torch::Dtype dtype = module_->dtype;
  const int64_t n = graph.n_nodes;
  const auto n_edges = static_cast<int64_t>(graph.senders.size());
  const auto n_elements = static_cast<int64_t>(atomic_numbers_.size());

  torch::Tensor positions = torch::empty({n, 3}, torch::kFloat64);
  std::memcpy(positions.data_ptr<double>(), graph.positions, n * 3 * sizeof(double));
  torch::Tensor columns = int64_tensor(graph.columns);
  torch::Tensor node_attrs = torch::zeros({n, n_elements}, dtype).scatter_(1, columns.unsqueeze(1), 1.0);
  torch::Tensor local = torch::zeros({n}, dtype);
  local.narrow(0, 0, graph.n_local).fill_(1.0);

  torch::Tensor unit_shifts = torch::zeros({n_edges, 3}, torch::kFloat64);
  if (!graph.unit_shifts.empty())
    std::memcpy(unit_shifts.data_ptr<double>(), graph.unit_shifts.data(), n_edges * 3 * sizeof(double));
  torch::Tensor cell = torch::empty({3, 3}, torch::kFloat64);
  std::memcpy(cell.data_ptr<double>(), graph.cell, 9 * sizeof(double));

  c10::Dict<std::string, torch::Tensor> data;
  data.insert("positions", positions.to(dtype));
  data.insert("node_attrs", node_attrs);
  data.insert("edge_index", torch::stack({int64_tensor(graph.senders), int64_tensor(graph.receivers)}));
  data.insert("shifts", unit_shifts.matmul(cell).to(dtype));
  data.insert("unit_shifts", unit_shifts.to(dtype));
  data.insert("cell", cell.to(dtype));
  data.insert("batch", torch::zeros({n}, torch::kInt64));
  data.insert("ptr", torch::tensor({static_cast<int64_t>(0), n}, torch::kInt64));

  c10::IValue result;
  try {
    result = module_->jit.forward({data, local, virial != nullptr});
  } catch (const c10::Error &e) {
    throw std::runtime_error(std::string("the model failed: ") + first_line(e.what_without_backtrace()));
  }
  const c10::impl::GenericDict out = result.toGenericDict();
  torch::Tensor force_tensor = output(out, "forces");
  std::memcpy(forces, force_tensor.data_ptr<double>(), n * 3 * sizeof(double));
  if (virial != nullptr) {
    torch::Tensor virials = output(out, "virials");
    std::memcpy(virial, virials.data_ptr<double>(), 9 * sizeof(double));
  }
  if (node_energies != nullptr) {
    torch::Tensor energies = output(out, "node_energy");
    std::memcpy(node_energies, energies.data_ptr<double>(), graph.n_local * sizeof(double));
  }
  return output(out, "total_energy_local").sum().item<double>();
}

}    // namespace peft_equi
