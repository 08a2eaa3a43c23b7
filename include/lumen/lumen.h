// Everything a lumen user needs, in one include.
#pragma once

#include "lumen/config.h"
#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/generate.h"
#include "lumen/hooks.h"
#include "lumen/model.h"
#include "lumen/runtime.h"
#include "lumen/safetensors.h"
#include "lumen/tensors.h"
#include "lumen/tokenizer.h"
