// The lumen side of the paired rounds (bench/paired.py): a bench binary's `serve` command answers
// one JSON request per stdin line with one stdout line "@@ {json}", so that the Python process
// can time lumen's measurement and eager's seconds apart, round after round. Other output goes to
// stderr (paired.py passes stray stdout lines through as well).
#pragma once

#include <functional>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

namespace bench {

inline void reply(const nlohmann::json& j) { std::cout << "@@ " << j.dump() << std::endl; }

// Sends `ready`, then answers requests with handle(request) until {"op": "quit"} or the end of
// stdin. An exception becomes {"error": message} and ends the loop (the driver stops there too).
inline int serve(const nlohmann::json& ready, const std::function<nlohmann::json(const nlohmann::json&)>& handle) {
  reply({{"ready", ready}});
  for (std::string line; std::getline(std::cin, line);) {
    if (line.empty()) continue;
    try {
      const auto req = nlohmann::json::parse(line);
      if (req.value("op", "") == "quit") return 0;
      reply(handle(req));
    } catch (const std::exception& e) {
      reply({{"error", e.what()}});
      return 1;
    }
  }
  return 0;
}

}  // namespace bench
