#pragma once

#include <stdexcept>

namespace ernie_vilg2 {

// A problem with the user's input (a flag, the export folder, a file). Its message is one
// line that names the flag, field or file; the program prints "error: " + message and
// exits with status 2.
class UserError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace ernie_vilg2
