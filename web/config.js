// The page's configuration. Action prices are not served by the API: keep them in step with the
// ActionCosts parameter the API is deployed with (ACTION_COSTS).
//
// Deployed: set apiBase to the API URL (no trailing slash) and auth to "token", and give the page a
// getToken() that returns the signed-in user's JWT from your identity provider, e.g.
//   auth: "token", getToken: async () => (await myAuth.currentSession()).idToken,
// Optional: userName (shown as "Signed in as …") and signOut() (shows a Sign out button).
window.CREDITS_CONFIG = {
  apiBase: "",
  auth: "local", // "local": the local stack's sign-in stand-in; "token": getToken() below
  actions: [
    { id: "search", label: "Search", cost: 1 },
    { id: "analyze", label: "Analyze", cost: 5 },
    { id: "generate", label: "Generate", cost: 10 },
  ],
  // Where the action buttons send their requests: the example premium function, which holds the
  // price while the action runs and charges only if it succeeds (deploy it with DeployExamples=true).
  // null: charge through POST /credits/use instead.
  actionPath: "/examples/",
  lowBalance: 10,
};
