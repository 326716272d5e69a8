// The API reference of `make dev`: Swagger UI (npm swagger-ui-dist, served from node_modules) on
// /openapi.yaml. Requests made with "Try it out" carry the page's local sign-in token, if any.
window.ui = SwaggerUIBundle({
  url: "/openapi.yaml",
  dom_id: "#swagger-ui",
  deepLinking: true,
  docExpansion: "list",
  defaultModelsExpandDepth: 0,
  tryItOutEnabled: false,
  requestInterceptor: (request) => {
    const token = localStorage.getItem("credits.token");
    const headers = request.headers || {};
    if (token && !headers.Authorization && !new URL(request.url, location.href).pathname.startsWith("/internal/")) {
      headers.Authorization = `Bearer ${token}`;
    }
    request.headers = headers;
    return request;
  },
});
