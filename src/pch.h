// Precompiled header for torch-using translation units: parsing torch's headers dominates build time.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>
