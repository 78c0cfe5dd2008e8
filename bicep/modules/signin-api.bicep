// The second declaration of the sign-in app registration (see signin.bicep):
// the App ID URI api://<appId>, known only once the app exists, and the API
// laptops call. Access tokens for it are v2 tokens (aud = the app id, issuer
// https://login.microsoftonline.com/<tenant>/v2.0), which is what the proxy's
// single-tenant issuer URL accepts. The Azure CLI is pre-authorized for the
// user_impersonation scope, so `az account get-access-token --scope
// api://<appId>/.default` on a laptop needs no consent prompt.
extension microsoftGraphV1

@description('Unique name of the app registration created by signin.bicep.')
param uniqueName string

@description('Display name of the app registration (required in every declaration).')
param displayName string

@description('Application (client) ID of the app registration.')
param appId string

// The Azure CLI's well-known first-party client id.
var azureCliAppId = '04b07795-8ddb-461a-bbee-02f9e1bf7b46'
// A scope's id must never change once the scope exists (Graph refuses to drop an
// enabled scope), so it is derived from the app's immutable unique name.
var userImpersonationId = guid(uniqueName, 'user_impersonation')

resource app 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  identifierUris: [
    'api://${appId}'
  ]
  api: {
    requestedAccessTokenVersion: 2
    oauth2PermissionScopes: [
      {
        id: userImpersonationId
        value: 'user_impersonation'
        type: 'User'
        isEnabled: true
        adminConsentDisplayName: 'Use Metaflow'
        adminConsentDescription: 'Lets the app call the Metaflow services on behalf of the signed-in user.'
        userConsentDisplayName: 'Use Metaflow'
        userConsentDescription: 'Lets the app call the Metaflow services on your behalf.'
      }
    ]
    preAuthorizedApplications: [
      {
        appId: azureCliAppId
        delegatedPermissionIds: [
          userImpersonationId
        ]
      }
    ]
  }
}

@description('The App ID URI of the app registration.')
output identifierUri string = app.identifierUris[0]
