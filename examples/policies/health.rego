package main

violation[msg] {
  input.response.status_code != 200
  msg = "HTTP status code is not 200"
}

violation[msg] {
  input.response.body != "OK"
  msg = "Response body is not 'OK'"
}
