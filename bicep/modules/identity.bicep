// The one user-assigned managed identity of the stack, trusted by the AKS
// OIDC issuer for each of the chart's service accounts (workload identity).

@description('Azure region for the identity.')
param location string

@description('Short organisation prefix used in every resource name.')
param orgPrefix string

@description('OIDC issuer URL of the AKS cluster.')
param oidcIssuerUrl string

@description('Namespace of the metadata service, UI and Airflow service accounts.')
param serviceNamespace string

@description('Namespace where flow pods run.')
param flowNamespace string

@description('Service account of the metadata service and UI backend.')
param serviceAccountService string

@description('Service account of flow pods.')
param serviceAccountFlows string

@description('Service account of Airflow.')
param serviceAccountAirflow string

@description('Tags applied to every resource.')
param tags object = {}

var federatedSubjects = [
  {
    name: serviceAccountService
    subject: 'system:serviceaccount:${serviceNamespace}:${serviceAccountService}'
  }
  {
    name: serviceAccountFlows
    subject: 'system:serviceaccount:${flowNamespace}:${serviceAccountFlows}'
  }
  {
    name: serviceAccountAirflow
    subject: 'system:serviceaccount:${serviceNamespace}:${serviceAccountAirflow}'
  }
]

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30' = {
  name: '${orgPrefix}-metaflow-id'
  location: location
  tags: tags
}

// One at a time: Azure rejects concurrent federated-credential writes on
// one identity.
@batchSize(1)
resource federatedCredentials 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2024-11-30' = [for fc in federatedSubjects: {
  parent: identity
  name: fc.name
  properties: {
    issuer: oidcIssuerUrl
    subject: fc.subject
    audiences: [
      'api://AzureADTokenExchange'
    ]
  }
}]

@description('Name of the identity.')
output name string = identity.name

@description('Client ID of the identity (the azure.workload.identity/client-id annotation).')
output clientId string = identity.properties.clientId

@description('Principal (object) ID of the identity, for role assignments.')
output principalId string = identity.properties.principalId
